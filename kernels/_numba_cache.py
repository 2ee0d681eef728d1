"""numba's on-disk kernel cache, safe while several processes fill it at once.

numba saves a compiled overload by reading the function's index file, choosing the first data file name
the index does not list, then writing the index and the data (``numba.core.caching.IndexDataCacheFile
.save``). Two processes that compile one function for different signatures at the same moment can both
read the index before either writes it: both choose the same data file, the index keeps one of the two
signatures, and the data file may hold the other one's machine code, which the next process to load that
signature then runs on the wrong types (a crash or wrong numbers; numba issue #4807, open). Here that is
two test workers compiling the peak finder for uint16 and float32 at once, a daemon warming its mode up
while ``edge bench`` compiles, or two daemons started together on a fresh install.

:func:`serialise_cache_writes` makes the whole save one step under an exclusive ``flock`` on a file beside
the index (the kernel drops it if the process dies). Loads need no lock: the index and the data files are
each replaced whole (written under a temporary name, then renamed), and an index entry whose data file is
not there yet reads as a miss, which compiles.
"""

from __future__ import annotations

import fcntl
import functools
from typing import Any

from numba.core import caching

_MARK = "_edge_serialised"


def serialise_cache_writes() -> None:
    """Hold an exclusive lock on ``<index>.lock`` for each cache save, in every process that calls this
    (idempotent). A numba without the index file class is left as it is."""
    cls = getattr(caching, "IndexDataCacheFile", None)
    if cls is None or getattr(cls.save, _MARK, False):
        return
    unlocked = cls.save

    @functools.wraps(unlocked)
    def save(self: Any, key: Any, data: Any) -> None:
        index = getattr(self, "_index_path", None)
        if index is None:
            unlocked(self, key, data)
            return
        with open(f"{index}.lock", "ab") as lock:  # closing the file releases the lock
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            unlocked(self, key, data)

    setattr(save, _MARK, True)
    cls.save = save
