"""Pure compute on detector frames: corrections, compression, integration, tomography, peaks, ROIs.

Each kernel has a NumPy reference (the oracle), a numba CPU backend and a GPU backend (numba.cuda
kernels, CuPy when installed); a registry picks one with a logged fallback chain GPU -> numba -> NumPy.
Nothing here does I/O or touches a GPU at import time, and bitshuffle is imported only to (de)compress.
"""

from kernels._compress import (
    compress_chunk,
    compress_chunks,
    decompress_chunk,
    decompress_chunks,
    hdf5_filter_options,
)
from kernels._corrections import make_gain
from kernels._detectors import DetectorModel, frame_dummies
from kernels._geometry import (
    RADIAL_UNITS,
    Geometry,
    Poni,
    PoniError,
    direct_beam,
    direct_beam_in_image,
    direct_distance,
    poni_text,
    read_poni,
    read_poni_bytes,
    read_poni_file,
)
from kernels._integrate import IntegrationResult, Integrator1D, Integrator2D
from kernels._invalid import invalid_pixels
from kernels._peaks import PeakFinder, Peaks, classify_hit
from kernels._registry import Backend, BackendUnavailable, available_backends, get_backend
from kernels._roi import RoiSet, RoiStats
from kernels._tomo import (
    StreamingReconstructor,
    assemble_sinograms,
    estimate_center,
    estimate_center_from_sinogram,
    filter_projections,
    fourier_filter,
    near_opposite_projections,
    opposite_projections,
)

__all__ = [
    "RADIAL_UNITS",
    "Backend",
    "BackendUnavailable",
    "DetectorModel",
    "Geometry",
    "IntegrationResult",
    "Integrator1D",
    "Integrator2D",
    "PeakFinder",
    "Peaks",
    "Poni",
    "PoniError",
    "RoiSet",
    "RoiStats",
    "StreamingReconstructor",
    "assemble_sinograms",
    "available_backends",
    "classify_hit",
    "compress_chunk",
    "compress_chunks",
    "decompress_chunk",
    "decompress_chunks",
    "direct_beam",
    "direct_beam_in_image",
    "direct_distance",
    "estimate_center",
    "estimate_center_from_sinogram",
    "filter_projections",
    "fourier_filter",
    "frame_dummies",
    "get_backend",
    "hdf5_filter_options",
    "invalid_pixels",
    "make_gain",
    "near_opposite_projections",
    "opposite_projections",
    "poni_text",
    "read_poni",
    "read_poni_bytes",
    "read_poni_file",
]
