"""What the command line does to its own process: a quiet TensorFlow start and a second Ctrl-C that always stops.

Neither belongs in the library: a Python user who imports kdkeras keeps TensorFlow's diagnostics and their own
signal handling.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

# On import (`kdkeras.cli` imports this module first), before anything imports TensorFlow: keep its C++ chatter off
# the user's terminal, at start-up and after. Level 3 also hides its runtime ERROR lines, e.g. oneDNN's "supports
# DT_HALF only on platforms with AVX-512 FP16" on CPUs without it: diagnostics for TensorFlow's developers; a failure
# that matters reaches Python as an exception, which kdkeras reports in one line. A user who asks for more (a level
# below 2) sees everything: then `import_tensorflow_quietly` hides nothing either (`main` passes this on). Levels 2
# and 3 get the quiet start.
_USER_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip()
SHOW_TF_DIAGNOSTICS = _USER_LEVEL.isdigit() and int(_USER_LEVEL) < 2
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Seconds the watchdog leaves Python's own handler (the training callback's "stopped immediately", or
# KeyboardInterrupt) to exit cleanly after the second signal before it ends the process itself.
_GRACE_SECONDS = 2.0


def import_tensorflow_quietly(show_diagnostics: bool = False) -> None:
    """Imports TensorFlow with its start-up lines hidden (oneDNN notice, "Could not find cuda drivers", and on a
    machine without a GPU `E0000 … failed call to cuInit`), which to a newcomer read like failures.

    TensorFlow's C++ logging writes some of them before `TF_CPP_MIN_LOG_LEVEL` applies (absl's "All log messages
    before absl::InitializeLog() is called are written to STDERR"), so the environment variable alone is not
    enough: file descriptor 2 points at /dev/null while TensorFlow loads and probes its devices.

    Args:
        show_diagnostics: hide nothing (`--debug`, or a `TF_CPP_MIN_LOG_LEVEL` below 2 set by the user).
    """
    if show_diagnostics or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()  # Probes the platforms (the cuInit line) while stderr is hidden.
        # Python-side absl warnings of TensorFlow and TFDS (e.g. "Variant folder … has no dataset_info.json")
        # are for their developers; kdkeras reports what matters in its own words.
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def stop_on_second_interrupt() -> None:
    """Makes a second Ctrl-C (or SIGTERM) end the process within seconds, whatever the main thread is doing.

    Python runs signal handlers only between bytecodes of the main thread, so a process stuck inside a long
    TensorFlow call (a huge shuffle buffer, a dataset being materialised) ignores Ctrl-C. The C-level handler does
    write each signal's number to the wake-up file descriptor at once, though: a daemon thread reads it, and after
    the second signal gives Python's own handler `_GRACE_SECONDS` to exit cleanly, then ends the process with
    status 130. Must be called from the main thread.
    """
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    stopping = (signal.SIGINT, signal.SIGTERM)

    def watch() -> None:
        received = 0
        while True:
            data = reader.recv(64)
            received += sum(1 for number in data if number in stopping)
            if received >= 2:
                time.sleep(_GRACE_SECONDS)
                os.write(2, b"kdkeras: interrupted twice: stopped immediately\n")
                os._exit(130)

    threading.Thread(target=watch, name="kdkeras-second-interrupt", daemon=True).start()
    # Keep the socket objects alive as long as the process (the fd is referenced only by number in C).
    stop_on_second_interrupt._sockets = (reader, writer)  # type: ignore[attr-defined]
