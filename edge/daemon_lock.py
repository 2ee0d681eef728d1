"""Whether a daemon is serving a ledger now: an advisory lock the running daemon holds (and the one
``edge pull`` holds on its output directory).

``edge run`` takes an exclusive ``flock`` on ``<ledger>.daemon`` for as long as it runs; the kernel drops
it when the process ends, however it ends (``kill -9`` included). So ``edge where``, reading the ledger
on its own, can tell a run that is going on (a daemon holds the lock) from a run whose daemon died
before it could end it ("interrupted": recovery ends it at the next start). It also holds
``STORE/.daemon`` (`StoreLock`): one daemon per store, whatever ledger each names.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["DaemonLock", "FileHold", "PidLock", "StoreLock", "daemon_running"]


def _lock_path(ledger_path: Path) -> Path:
    # beside the ledger file itself: a symbolic link to a ledger named another lock, and a second daemon
    # served the first's ledger (an outside probe)
    real = ledger_path.resolve()
    return real.with_name(real.name + ".daemon")


class PidLock:
    """An exclusive advisory lock on ``path`` for as long as this process holds it (its pid inside, for
    people); the kernel drops it when the process ends, however it ends."""

    writes_pid = True  # the holder's pid into the lock file, for people

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False when another live process holds it (the file is made if not there)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        if self.writes_pid:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                # (a full disk): let go, or the next try, by this very process, finds the lock held by
                # the descriptor left open here: an outside probe's `edge pull` waiting for a full output
                # said at its first retry that "another edge pull" used it, and exited 2
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise
        self._fd = fd
        return True

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now; creates nothing (a refused start touches no
        file)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file (or none that can be read): nobody holds it
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def holder(self) -> str:
        """The pid the lock file names (the daemon holding it), or "?" when it cannot be read."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class DaemonLock(PidLock):
    """The running daemon's hold on its ledger."""

    def __init__(self, ledger_path: Path) -> None:
        super().__init__(_lock_path(ledger_path))


def daemon_running(ledger_path: Path) -> bool:
    """True while some process (another than the caller) holds the daemon lock of this ledger."""
    return DaemonLock(ledger_path).held_elsewhere()


class StoreLock(PidLock):
    """The running daemon's hold on its store directory (``STORE/.daemon``): one daemon per store, even
    when two name different ledgers (``ledger.path``)."""

    def __init__(self, store: Path) -> None:
        super().__init__(store.resolve() / ".daemon")


class FileHold(PidLock):
    """An exclusive ``flock`` on a file itself (the ledger), held without writing to it: two names of one
    file (a hard link: its lock file beside each name differs) are one lock. SQLite's own locks are
    ``fcntl`` locks, which ``flock`` does not touch."""

    writes_pid = False  # (the file is the ledger: never written here)

    def holder(self) -> str:
        return "?"
