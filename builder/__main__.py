"""`python -m builder` is the `builder` command."""
from builder.cli import entry_point

entry_point()
