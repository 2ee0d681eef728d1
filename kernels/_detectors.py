"""pyFAI's named detectors that a ``.poni`` file may name, as plain data: pixel size, shape, module gaps.

pyFAI writes ``Detector: Pilatus1M`` and, in ``Detector_config``, only what differs from the class
(often not ``max_shape``), so the shape and the gap mask of a named detector come from this table. It
lists the flat detectors with uniform square-grid pixels and no spline whose pyFAI mask is either absent
or the module-gap mask computed below (``_Dectris.calc_mask``, plus the two middle columns of an
Eiger2 CdTe module). Detectors left out (non-flat, hexagonal or non-uniform pixels, spline-corrected,
or with a mask of another kind: Mar345, Rayonix133/Sx165, Pilatus CdTe, Jungfrau8M, Xpad, ...) are
refused by name rather than integrated wrongly. Generated from pyFAI 2026.9; ``tests/unit/kernels``
checks every row, and every mask, against the installed pyFAI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DetectorModel:
    """A pyFAI detector class as data. Sizes in metres, shapes (slow, fast) in pixels."""

    name: str
    pixel1: float
    pixel2: float
    max_shape: tuple[int, int] | None
    module_size: tuple[int, int] | None = None
    module_gap: tuple[int, int] | None = None
    middle_gap: bool = False  # Eiger2 CdTe: two more masked columns in the middle of each module
    force_pixel: bool = True  # pyFAI reads a larger pixel as binning; we refuse binning instead
    #: the value the detector writes into an invalid pixel (pyFAI's ``DUMMY``), and its tolerance
    #: (``DELTA_DUMMY``); None: the detector marks none
    dummy: float | None = None
    delta_dummy: float | None = None

    def dummies(self, dtype: object) -> tuple[float, float] | None:
        """pyFAI's ``get_dummies`` for frames of ``dtype``; see `frame_dummies`."""
        return None if self.dummy is None else frame_dummies(self.dummy, self.delta_dummy, dtype)

    def mask(self, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """pyFAI's mask of the inter-module gaps (True = excluded), or None for a detector without one."""
        if self.module_size is None or self.module_gap is None:
            return None
        shape = shape or self.max_shape
        if shape is None:
            return None
        (m1, m2), (g1, g2) = self.module_size, self.module_gap
        mask = np.zeros(shape, dtype=bool)
        for i in range(m1, shape[0], m1 + g1):
            mask[i : i + g1, :] = True
        for i in range(m2, shape[1], m2 + g2):
            mask[:, i : i + g2] = True
        if self.middle_gap:
            for i in range(m2 // 2, shape[1], m2 + g2):
                mask[:, i - 1 : i + 1] = True
        return mask if mask.any() else None


# name: (pixel1, pixel2, max_shape, module_size, module_gap, middle_gap, force_pixel)
_TABLE: dict[
    str, tuple[float, float, tuple[int, int], tuple[int, int] | None, tuple[int, int] | None, bool, bool]
] = {
    "ADSC_Q210": (5.1e-05, 5.1e-05, (4096, 4096), None, None, False, True),
    "ADSC_Q270": (5.1e-05, 5.1e-05, (4168, 4168), None, None, False, True),
    "ADSC_Q315": (5.1e-05, 5.1e-05, (6144, 6144), None, None, False, True),
    "ADSC_Q4": (5.1e-05, 5.1e-05, (2304, 2304), None, None, False, True),
    "Apex2": (0.00012, 0.00012, (1024, 1024), None, None, False, True),
    "Basler": (3.75e-06, 3.75e-06, (966, 1296), None, None, False, True),
    "Dexela2923": (7.5e-05, 7.5e-05, (3888, 3072), None, None, False, True),
    "Eiger16M": (7.5e-05, 7.5e-05, (4371, 4150), (514, 1030), (37, 10), False, True),
    "Eiger1M": (7.5e-05, 7.5e-05, (1065, 1030), (514, 1030), (37, 10), False, True),
    "Eiger2CdTe_16M": (7.5e-05, 7.5e-05, (4362, 4148), (512, 1028), (38, 12), True, True),
    "Eiger2CdTe_1M": (7.5e-05, 7.5e-05, (1062, 1028), (512, 1028), (38, 12), True, True),
    "Eiger2CdTe_1MW": (7.5e-05, 7.5e-05, (512, 2068), (512, 1028), (38, 12), True, True),
    "Eiger2CdTe_2MW": (7.5e-05, 7.5e-05, (512, 4148), (512, 1028), (38, 12), True, True),
    "Eiger2CdTe_4M": (7.5e-05, 7.5e-05, (2162, 2068), (512, 1028), (38, 12), True, True),
    "Eiger2CdTe_500k": (7.5e-05, 7.5e-05, (512, 1028), (512, 1028), (38, 12), True, True),
    "Eiger2CdTe_9M": (7.5e-05, 7.5e-05, (3262, 3108), (512, 1028), (38, 12), True, True),
    "Eiger2_16M": (7.5e-05, 7.5e-05, (4362, 4148), (512, 1028), (38, 12), False, True),
    "Eiger2_1M": (7.5e-05, 7.5e-05, (1062, 1028), (512, 1028), (38, 12), False, True),
    "Eiger2_1MW": (7.5e-05, 7.5e-05, (512, 2068), (512, 1028), (38, 12), False, True),
    "Eiger2_250k": (7.5e-05, 7.5e-05, (512, 512), (512, 1028), (38, 12), False, True),
    "Eiger2_2MW": (7.5e-05, 7.5e-05, (512, 4148), (512, 1028), (38, 12), False, True),
    "Eiger2_4M": (7.5e-05, 7.5e-05, (2162, 2068), (512, 1028), (38, 12), False, True),
    "Eiger2_500k": (7.5e-05, 7.5e-05, (512, 1028), (512, 1028), (38, 12), False, True),
    "Eiger2_9M": (7.5e-05, 7.5e-05, (3262, 3108), (512, 1028), (38, 12), False, True),
    "Eiger4M": (7.5e-05, 7.5e-05, (2167, 2070), (514, 1030), (37, 10), False, True),
    "Eiger500k": (7.5e-05, 7.5e-05, (514, 1030), (514, 1030), (37, 10), False, True),
    "Eiger9M": (7.5e-05, 7.5e-05, (3269, 3110), (514, 1030), (37, 10), False, True),
    "FReLoN": (5e-05, 5e-05, (2048, 2048), None, None, False, False),
    "Fairchild": (1.5e-05, 1.5e-05, (4096, 4096), None, None, False, True),
    "HF_130K": (0.00015, 0.00015, (256, 512), None, None, False, True),
    "HF_1M": (0.00015, 0.00015, (1024, 1024), None, None, False, True),
    "HF_262k": (0.00015, 0.00015, (512, 512), None, None, False, True),
    "HF_2M": (0.00015, 0.00015, (1536, 1536), None, None, False, True),
    "HF_4M": (0.00015, 0.00015, (2048, 2048), None, None, False, True),
    "HF_9M": (0.00015, 0.00015, (3072, 3072), None, None, False, True),
    "Jungfrau": (7.5e-05, 7.5e-05, (512, 1024), None, None, False, True),
    "Jungfrau1M": (7.5e-05, 7.5e-05, (1064, 1030), (514, 1030), (36, 8), False, True),
    "Jungfrau4M": (7.5e-05, 7.5e-05, (2164, 2068), (514, 1030), (36, 8), False, True),
    "Lambda10M": (5.5e-05, 5.5e-05, (2596, 4676), (256, 256), (4, 4), False, True),
    "Lambda250k": (5.5e-05, 5.5e-05, (516, 516), (256, 256), (4, 4), False, True),
    "Lambda2M": (5.5e-05, 5.5e-05, (1556, 1556), (256, 256), (4, 4), False, True),
    "Lambda60k": (5.5e-05, 5.5e-05, (256, 256), (256, 256), (4, 4), False, True),
    "Lambda750k": (5.5e-05, 5.5e-05, (516, 1556), (256, 256), (4, 4), False, True),
    "Lambda7M5": (5.5e-05, 5.5e-05, (2596, 2596), (256, 256), (4, 4), False, True),
    "Mar555": (0.000139, 0.000139, (3072, 2560), None, None, False, True),
    "Maxipix": (5.5e-05, 5.5e-05, (256, 256), (256, 256), (4, 4), False, True),
    "Maxipix2x2": (5.5e-05, 5.5e-05, (516, 516), (256, 256), (4, 4), False, True),
    "Maxipix5x1": (5.5e-05, 5.5e-05, (256, 1296), (256, 256), (4, 4), False, True),
    "Mythen": (0.008, 5e-05, (1, 1280), None, None, False, True),
    "Perkin": (0.0002, 0.0002, (4096, 4096), None, None, False, True),
    "Pilatus100k": (0.000172, 0.000172, (195, 487), (195, 487), (17, 7), False, True),
    "Pilatus1M": (0.000172, 0.000172, (1043, 981), (195, 487), (17, 7), False, True),
    "Pilatus200k": (0.000172, 0.000172, (407, 487), (195, 487), (17, 7), False, True),
    "Pilatus2M": (0.000172, 0.000172, (1679, 1475), (195, 487), (17, 7), False, True),
    "Pilatus300k": (0.000172, 0.000172, (619, 487), (195, 487), (17, 7), False, True),
    "Pilatus300kw": (0.000172, 0.000172, (195, 1475), (195, 487), (17, 7), False, True),
    "Pilatus4_1M": (0.00015, 0.00015, (1080, 1033), (255, 513), (20, 7), False, True),
    "Pilatus4_260k": (0.00015, 0.00015, (530, 513), (255, 513), (20, 7), False, True),
    "Pilatus4_260kw": (0.00015, 0.00015, (255, 1033), (255, 513), (20, 7), False, True),
    "Pilatus4_2M": (0.00015, 0.00015, (1630, 1553), (255, 513), (20, 7), False, True),
    "Pilatus4_4M": (0.00015, 0.00015, (2180, 2073), (255, 513), (20, 7), False, True),
    "Pilatus6M": (0.000172, 0.000172, (2527, 2463), (195, 487), (17, 7), False, True),
    "Pilatus900k": (0.000172, 0.000172, (619, 1475), (195, 487), (17, 7), False, True),
    "Pixium": (0.000308, 0.000308, (1910, 2480), None, None, False, True),
    "RaspberryPi12M": (1.55e-06, 1.55e-06, (3040, 4056), None, None, False, True),
    "RaspberryPi5M": (1.4e-06, 1.4e-06, (1944, 2592), None, None, False, True),
    "RaspberryPi8M": (1.12e-06, 1.12e-06, (2464, 3280), None, None, False, True),
    "RayonixLx170": (4.42708e-05, 4.42708e-05, (1920, 3840), None, None, False, True),
    "RayonixLx255": (4.42708e-05, 4.42708e-05, (1920, 5760), None, None, False, True),
    "RayonixMx170": (4.42708e-05, 4.42708e-05, (3840, 3840), None, None, False, True),
    "RayonixMx225": (7.3242e-05, 7.3242e-05, (6144, 6144), None, None, False, True),
    "RayonixMx225hs": (7.8125e-05, 7.8125e-05, (5760, 5760), None, None, False, True),
    "RayonixMx300": (7.3242e-05, 7.3242e-05, (8192, 8192), None, None, False, True),
    "RayonixMx300hs": (7.8125e-05, 7.8125e-05, (7680, 7680), None, None, False, True),
    "RayonixMx325": (7.9346e-05, 7.9346e-05, (8192, 8192), None, None, False, True),
    "RayonixMx340hs": (8.85417e-05, 8.85417e-05, (7680, 7680), None, None, False, True),
    "RayonixMx425hs": (4.42708e-05, 4.42708e-05, (9600, 9600), None, None, False, True),
    "RayonixSx200": (4.8e-05, 4.8e-05, (4096, 4096), None, None, False, True),
    "RayonixSx30hs": (1.5625e-05, 1.5625e-05, (1920, 1920), None, None, False, True),
    "RayonixSx85hs": (4.42708e-05, 4.42708e-05, (1920, 1920), None, None, False, True),
    "Titan": (6e-05, 6e-05, (2048, 2048), None, None, False, True),
}


def frame_dummies(dummy: float, delta_dummy: float | None, dtype: object) -> tuple[float, float]:
    """The (dummy, delta) a pixel of a frame of ``dtype`` is compared with, as pyFAI's
    ``Detector.get_dummies`` makes them: the dummy cast to the frame's type through int64 (DECTRIS's -2
    is 65534 in a uint16 frame, 4294967294 in a uint32 one, where the detector writes its all-ones
    values), then to float32; the tolerance as float32 (float32's epsilon when the detector gives none).
    A pixel is invalid when ``abs(float32(value) - dummy) <= delta``, computed in float32."""
    frame_type = np.dtype(dtype)  # type: ignore[call-overload]
    cast = np.array(np.int64(dummy)).astype(frame_type)  # wraps into an unsigned type, as C casts
    value = float(np.float32(cast))
    delta = float(np.finfo(np.float32).eps) if delta_dummy is None else float(np.float32(delta_dummy))
    return value, delta


def _dummies(name: str) -> tuple[float, float | None] | tuple[None, None]:
    """pyFAI's ``DUMMY``, ``DELTA_DUMMY`` of a detector class: DECTRIS's (Pilatus, Eiger, and PSI's
    Jungfrau 1M and 4M, modelled on them) -2 +- 1.5; X-Spectrum's Lambda 0 exactly; others none."""
    if name.startswith(("Pilatus", "Eiger")) or name in ("Jungfrau1M", "Jungfrau4M"):
        return -2.0, 1.5
    if name.startswith("Lambda"):
        return 0.0, None
    return None, None


DETECTORS: dict[str, DetectorModel] = {
    name: DetectorModel(name, *row, *_dummies(name)) for name, row in _TABLE.items()
}
