"""`python -m ntkit.cli ...`: the same command line as the `ntkit` script."""

import sys

from ntkit.cli import main

sys.exit(main())
