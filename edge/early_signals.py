"""The ``edge`` command's entry point, before anything heavy is imported.

``edge run`` notes SIGTERM, SIGINT and SIGHUP from its first moment (`catch`): the daemon acts on them
once its own handlers are in place (a stop exits 0, a reload reloads). Python's default action ended a
daemon signalled in its first second (exit 143, or 129 for a SIGHUP) while ``edge.cli`` and the settings
were still being imported (an outside probe). Nothing is imported here but ``signal`` and ``sys``.
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
    if sys.argv[1:2] == ["run"]:
        catch()
    from edge.cli import main as cli_main

    return cli_main()
