"""The `kdkeras` command line: train, distill, tune, evaluate, info, export, compress, benchmark, demo, experiment.

Every failure the user can cause ends in one line on stderr, `kdkeras: error: …`, and exit status 2 (1 for an
internal error, with `--debug` showing its traceback), never a bare traceback.

Modules: `main` (entry point and error boundary), `parser` (one builder per command), `options` (shared option
types and groups), `commands` (train, distill, evaluate, info, tune, demo, experiment), `deploy` (export, compress,
benchmark), `runtime` (a quiet TensorFlow start and a second Ctrl-C that always stops). The library never imports
from here.
"""

import os

# Before TensorFlow is imported anywhere: keep its C++ chatter off the user's terminal, at start-up and after. Level 3
# also hides its runtime ERROR lines, e.g. oneDNN's "supports DT_HALF only on platforms with AVX-512 FP16" on CPUs
# without it: diagnostics for TensorFlow's developers; a failure that matters reaches Python as an exception, which
# kdkeras reports in one line. A user who asks for more (a level below 2) sees everything: then
# `runtime.import_tensorflow_quietly` hides nothing either (`main` reads this). Levels 2 and 3 get the quiet start.
_USER_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip()
SHOW_TF_DIAGNOSTICS = _USER_LEVEL.isdigit() and int(_USER_LEVEL) < 2
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from kdkeras.cli.commands import parse_feature_pairs  # noqa: E402
from kdkeras.cli.main import main  # noqa: E402
from kdkeras.cli.options import BUILT_IN_TERMS  # noqa: E402
from kdkeras.cli.parser import build_parser  # noqa: E402

__all__ = ["BUILT_IN_TERMS", "build_parser", "main", "parse_feature_pairs"]
