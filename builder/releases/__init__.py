"""Release matrices: one release.yaml -> every bundle of a release, built on a Ray cluster, pushed with one index."""
