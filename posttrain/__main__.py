"""`python -m posttrain ...` (what `accelerate launch -m posttrain run RECIPE` calls)."""
import sys

from posttrain.cli import main

sys.exit(main())
