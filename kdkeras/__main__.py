"""`python -m kdkeras` runs the command line."""

import sys

from kdkeras.cli import main

sys.exit(main())
