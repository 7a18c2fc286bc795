"""The ``csd2d`` console entry point, kept free of heavy imports.

Ctrl-C is answered in two phases, both ending with one line on stderr and exit code 130, never a traceback:

1. **Until the model has loaded** (imports, argument and input checks, weight loading) nothing has been written,
   so the process ends at once. A ``KeyboardInterrupt`` here would be unsafe: a library interrupted in the middle
   of an import can swallow it (or half-import numpy) and go on to fail with an unrelated error.
2. **While editing and writing** (:func:`interrupts_raise`, called by :func:`csd2d.cli.run`) Ctrl-C raises
   ``KeyboardInterrupt``, so the ``finally`` blocks that remove temporaries run: outputs are written whole or
   not at all.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

INTERRUPTED = "csd2d: interrupted (outputs are written whole or not at all)"


def _exit_now(signum=None, frame=None) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.write(2, (INTERRUPTED + "\n").encode())
    os._exit(130)


def interrupts_raise() -> None:
    """Phase 2: from here on Ctrl-C raises ``KeyboardInterrupt``. A no-op unless :func:`entrypoint` installed phase 1
    (``csd2d.cli.main`` called in-process keeps its caller's handler)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _exit_now:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def entrypoint() -> None:
    signal.signal(signal.SIGINT, _exit_now)
    try:
        from .cli import main

        code = main()
    except KeyboardInterrupt:  # main answers its own; this is one that slipped past it
        _exit_now()
    # The work is finished (or cleanly abandoned); a Ctrl-C during interpreter shutdown changes nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)
