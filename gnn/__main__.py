"""``python -m gnn`` and the ``gnn`` console script.

Signals are handled from the first line: until the command line's own handlers take over
(inside :func:`gnn.cli.main`), SIGINT or SIGTERM end the process with one line, since nothing has
been written yet. A stopped command leaves through ``os._exit``: a SIGINT that arrived while
torch was being imported would otherwise make the interpreter re-raise it on exit (its C-level
code records an "unhandled" KeyboardInterrupt), ending the process by the signal instead of
with exit code 130.
"""

import os
import signal
import sys

EXIT_STOPPED = (130, 143)  # 128 + SIGINT, 128 + SIGTERM


def _stop_early(signum: int, frame: object) -> None:
    what = "interrupted (SIGINT)" if signum == signal.SIGINT else "terminated (SIGTERM)"
    sys.stderr.write(f"gnn: error: {what}; no partial file was written\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def run() -> None:
    signal.signal(signal.SIGINT, _stop_early)
    signal.signal(signal.SIGTERM, _stop_early)
    from gnn.cli import main
    from gnn.memory import keep_freed_memory

    keep_freed_memory()

    code = main()
    if code in EXIT_STOPPED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
