"""Checksums and durability of files on disk, shared by the store, the forwarder and the pull client.

A file is checksummed once it is closed (xxh3-128: ~10x faster than SHA-256 and ample against
corruption; this is not a security boundary), whole and per transfer chunk; made durable with fsync
(its directory too, for a new name); and its page-cache pages handed back once nothing reads it again
soon (``drop_cached``).
"""

from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path

import hdf5plugin  # noqa: F401  (registers filter 32008 with HDF5)
import xxhash

log = logging.getLogger(__name__)


CHECKSUM = "xxh3-128"


def checksum_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def file_checksums(path: Path, chunk_bytes: int = 0) -> tuple[int, str, list[tuple[int, int, str]]]:
    """Size, whole-file checksum and per-chunk ``(offset, length, checksum)`` in one pass (no chunks with
    ``chunk_bytes`` 0).

    The file is mapped (the pages are the page cache's own: the file was just written), so its bytes are
    hashed where they lie instead of being copied out first.
    """
    whole = xxhash.xxh3_128()
    chunks: list[tuple[int, int, str]] = []
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return 0, whole.hexdigest(), []
        with mmap.mmap(handle.fileno(), size, flags=_MAP_FLAGS, prot=mmap.PROT_READ) as mapped:
            view = memoryview(mapped)
            try:
                step = chunk_bytes or size
                for offset in range(0, size, step):
                    block = view[offset : offset + step]
                    whole.update(block)
                    if chunk_bytes:
                        chunks.append((offset, len(block), checksum_bytes(block)))
                    block.release()
            finally:
                view.release()
    return size, whole.hexdigest(), chunks


#: shared read-only mappings, populated in one call (fewer page faults than touching page by page)
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def drop_cached(path: str | Path) -> bool:
    """Hand a closed, fsynced file's pages in the page cache back to the kernel; False if it could not be.

    Called once the appliance will not read the file again soon: every required consumer has confirmed it
    (the forwarder's reads are done), or it is kept only locally. Frames keep arriving at hundreds of MB a
    second; without this the page cache grows by every byte written, and each new page comes from memory
    the kernel has not touched for a while. On this project's 2-core VM (free-page reporting) a new page
    costs ~10 us of the writer's CPU: 2 ms per 1024^2 frame instead of 0.2 ms once the cache had grown
    by ~1 GB; pages handed back are reused while they are still warm (``docs/kernels.md``). The data is on
    disk either way: a later read (a resend, a consumer added later) reads it from there.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # purged or moved meanwhile: nothing of it to hand back
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:  # (a file system without the advice)
        return False
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
