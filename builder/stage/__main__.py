"""`python -m builder.stage SPEC.json OUTPUT_DIR`: the export stage's entry point (in the builder image too)."""
import sys

from builder.stage import main

sys.exit(main())
