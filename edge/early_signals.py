"""The ``edge`` command's entry point, before anything heavy is imported.

``edge run``, ``edge sim`` and ``edge demo`` note SIGTERM, SIGINT and SIGHUP from their first moment
(`catch`): each acts on them once its own handlers are in place (the daemon: a stop exits 0, a reload
reloads; the simulator: a stop sends nothing more and prints its account; the demo: a stop while it
starts is its "stopped (Ctrl-C)" account, exit 130; a traceback and no JSON before). Python's default
action ended a daemon signalled in its first second (exit 143, or 129 for a SIGHUP) while ``edge.cli``
and the settings were still being imported (an outside probe). Nothing is imported here but ``signal``
and ``sys``.
"""

from __future__ import annotations

import signal
import sys

#: signals received before the daemon could act on them, oldest first
NOTED: list[int] = []


def _note(signum: int, frame: object) -> None:
    NOTED.append(signum)


def catch() -> None:
    """Note SIGTERM, SIGINT and SIGHUP instead of their default action."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _note)


def main() -> int:
    """The ``edge`` command (``python -m edge`` too)."""
    if sys.argv[1:2] in (["run"], ["sim"], ["demo"]):
        # (the simulator too: a demo's Ctrl-C while its simulator still imported ended it with a
        # KeyboardInterrupt traceback, and the demo called the user's own stop a component's crash)
        catch()
    from edge.cli import main as cli_main

    return cli_main()
