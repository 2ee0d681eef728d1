"""HDF5 objects written once into an in-memory file and copied into every file that holds them.

Writing a few dozen small datasets and attributes through h5py costs milliseconds of CPU a file, and a
compressed mask far more; ``H5Ocopy`` (``Group.copy``) copies the same objects, values, attributes and
compressed chunks as they are in a fraction of that. With rollover files of 100 frames that is tens of
microseconds of every frame (the run's NXmx header, its reduction record, a powder run's axes and
correction flags)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import h5py


class H5Template:
    """What ``fill`` writes into the root of an in-memory HDF5 file, copied by name into other groups."""

    def __init__(self, fill: Callable[[h5py.Group], None]) -> None:
        name = f"edge-template-{uuid.uuid4().hex}.h5"  # a name only: nothing is written to disk
        self.h5 = h5py.File(name, "w", driver="core", backing_store=False, libver="latest")
        fill(self.h5)

    def copy_into(self, group: h5py.Group, *names: str) -> None:
        """Copy the template's top-level objects ``names`` (all when none are named) into ``group``."""
        for name in names or tuple(self.h5):
            self.h5.copy(self.h5[name], group, name=name)

    def close(self) -> None:
        self.h5.close()


class LazyTemplate:
    """An `H5Template` made by the first file that needs it (from any thread), the same one after."""

    def __init__(self, fill: Callable[[h5py.Group], None]) -> None:
        self._fill = fill
        self._lock = threading.Lock()
        self._template: H5Template | None = None

    def copy_into(self, group: h5py.Group, *names: str) -> None:
        with self._lock:
            if self._template is None:
                self._template = H5Template(self._fill)
            self._template.copy_into(group, *names)
