"""The `kdkeras` command line: train, distill, tune, evaluate, info, export, compress, benchmark, demo, experiment.

Every failure the user can cause ends in one line on stderr, `kdkeras: error: …`, and exit status 2 (1 for an
internal error, with `--debug` showing its traceback), never a bare traceback.

Modules: `main` (entry point and error boundary), `parser` (one builder per command), `options` (shared option
types and groups), `commands` (train, distill, evaluate, info, tune, demo, experiment), `deploy` (export, compress,
benchmark), `runtime` (a quiet TensorFlow start and a second Ctrl-C that always stops). The library never imports
from here.
"""

# First: `runtime` sets TensorFlow's C++ log level before anything imports TensorFlow.
from kdkeras.cli import runtime  # noqa: F401, I001
from kdkeras.cli.commands import parse_feature_pairs  # noqa: E402
from kdkeras.cli.main import main  # noqa: E402
from kdkeras.cli.options import BUILT_IN_TERMS  # noqa: E402
from kdkeras.cli.parser import build_parser  # noqa: E402

__all__ = ["BUILT_IN_TERMS", "build_parser", "main", "parse_feature_pairs"]
