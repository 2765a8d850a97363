"""`python -m apiguard` runs the command line."""

import sys

from apiguard.cli import main

sys.exit(main())
