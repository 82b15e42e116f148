"""`python -m kdkeras.experiments CONFIG [--budget …] [--rows …]`: the same as `kdkeras experiment`."""

import sys

from kdkeras import cli

sys.exit(cli.main(["experiment", *sys.argv[1:]], as_program=True))
