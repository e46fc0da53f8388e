"""The shipped Jinja templates of the bundles, one folder per target (installed as builder.templates)."""
