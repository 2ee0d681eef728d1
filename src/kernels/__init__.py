"""Pure compute on detector frames: corrections, compression, azimuthal integration.

Each kernel has a NumPy reference (the oracle) and a numba CPU backend; a registry picks one with a
logged fallback chain. Nothing here does I/O or touches a GPU at import time.
"""

from kernels._compress import compress_chunk, decompress_chunk, hdf5_filter_options
from kernels._geometry import Geometry, read_poni
from kernels._registry import Backend, BackendUnavailable, available_backends, get_backend

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Geometry",
    "available_backends",
    "compress_chunk",
    "decompress_chunk",
    "get_backend",
    "hdf5_filter_options",
    "read_poni",
]
