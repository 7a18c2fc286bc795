"""The ``csd2d`` console entry point, kept free of heavy imports.

A Ctrl-C at any moment after the interpreter starts, while torch and the model are still importing included,
ends with one line on stderr and exit code 130, never a traceback; outputs are written whole or not at all.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = "csd2d: interrupted (outputs are written whole or not at all)"


def entrypoint() -> None:
    try:
        from .cli import main

        code = main()
    except KeyboardInterrupt:
        # Reached when the Ctrl-C lands while the CLI is importing (main answers the ones after that itself).
        # os._exit, not sys.exit: an interrupt inside an import that CPython ran through PyRun_* leaves its
        # "unhandled KeyboardInterrupt" flag set, and the interpreter would then kill itself with SIGINT (-2)
        # even though the exception was handled here. Nothing of ours needs finalizing at this point; the
        # `finally` blocks that remove temporaries ran while the exception unwound.
        print(INTERRUPTED, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    # The work is finished (or cleanly abandoned); a Ctrl-C during interpreter shutdown changes nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)
