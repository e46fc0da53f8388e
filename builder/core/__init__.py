"""The bottom layer: errors, logging, atomic files, hashing, images, the manifest and archives; no ML stack."""
