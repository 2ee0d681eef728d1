"""Tomography: flat-field normalisation, sinograms, filtered back-projection and streaming slices.

Conventions follow ``skimage.transform.iradon`` (scikit-image 0.26) so that it can be the oracle, with
one difference in layout: our sinograms are ``(n_angles, n_detector)``, one projection row per angle
(tomopy's layout, what stacking projections gives), where skimage's are the transpose.

* The rotation axis sits at detector pixel ``center`` (default ``n_detector // 2``, skimage's choice).
* ``circle=True``: the sinogram is zero-padded to ``ceil(sqrt(2) * n)`` (skimage's
  ``_sinogram_circle_to_square``), the output is ``n x n`` and zero outside the inscribed circle;
  ``circle=False``: output ``floor(n / sqrt(2))``.
* Filtering: each projection is zero-padded to ``max(64, 2**ceil(log2(2 * n)))`` and multiplied in
  Fourier space by skimage's filter (the ramp built from the FFT of its real-space kernel, Kak & Slaney
  eq. 61, times the Shepp-Logan sinc, or the Hann window). That is done once per projection set as
  ``irfft(rfft(p) * H_even)`` in float32 (scipy.fft on every core when scipy is there, else NumPy's
  FFT), which equals skimage's ``real(ifft(fft(p) * H))`` (see ``even_part``) to ~1e-6 of the peak.
  The circle=True padding is not materialised: filtering is a circular convolution, so the projection
  is transformed from column 0 and the result read back shifted by the padding.
* Back-projection: output pixel (row ``i``, column ``j``) with ``x = i - R``, ``y = j - R``,
  ``R = size // 2``, reads the filtered projection at ``t = y cos(theta) - x sin(theta)`` from the axis,
  by linear interpolation, zero outside the detector; the sum over angles is scaled by
  ``pi / (2 n_angles)``.

The per-backend part is only ``backproject`` (it adds into a float32 image); everything here is shared.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kernels._registry import Backend

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann", None)


def fourier_filter(size: int, filter_name: str | None = "ramp") -> np.ndarray:
    """skimage's Fourier-space filter of even length ``size`` (float64, length ``size``)."""
    if filter_name not in FILTERS:
        raise ValueError(f"unknown filter {filter_name!r}; choose one of {FILTERS}")
    if size % 2:
        raise ValueError(f"filter size must be even, got {size}")
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int), np.arange(size / 2 - 1, 0, -2, dtype=int)))
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1 / (np.pi * n) ** 2
    filt = 2 * np.real(np.fft.fft(f))
    if filter_name == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(size)[1:]
        filt[1:] *= np.sin(omega) / omega
    elif filter_name == "cosine":  # the ramp times a half-period sine over the band (0 at DC and Nyquist)
        filt *= np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    elif filter_name == "hamming":
        filt *= np.fft.fftshift(np.hamming(size))
    elif filter_name == "hann":
        filt *= np.fft.fftshift(np.hanning(size))
    elif filter_name is None:
        filt[:] = 1.0
    return filt


def even_part(filt: np.ndarray) -> np.ndarray:
    """``(H[k] + H[-k]) / 2``: what a real filter does to a real signal once the imaginary part is dropped.

    skimage keeps ``real(ifft(fft(p) * H))``; for a real ``p`` that equals filtering with the even part of
    ``H``. Ramp and Shepp-Logan are even already; the shifted Hann window of even length is not.
    """
    return 0.5 * (filt + np.roll(filt[::-1], 1))


def padded_size(n_detector: int) -> int:
    """Length each projection is zero-padded to before filtering (skimage's rule)."""
    return max(64, int(2 ** np.ceil(np.log2(2 * n_detector))))


def circle_pad(n_detector: int) -> tuple[int, int]:
    """(padded width, pad before) of skimage's circle=True zero padding of a sinogram row."""
    diagonal = int(np.ceil(np.sqrt(2) * n_detector))
    return diagonal, diagonal // 2 - n_detector // 2


def default_output_size(n_detector: int, circle: bool) -> int:
    return n_detector if circle else int(np.floor(np.sqrt(n_detector**2 / 2.0)))


@functools.lru_cache(maxsize=16)
def _half_spectrum(size: int, filter_name: str | None) -> np.ndarray:
    """The even part of ``fourier_filter(size, filter_name)`` for ``rfft``'s ``size // 2 + 1`` bins, float32.

    Built once per (size, filter) and shared read-only: a streamed projection would otherwise pay for a
    ``size``-point FFT of the filter's real-space kernel every time.
    """
    half = even_part(fourier_filter(size, filter_name))[: size // 2 + 1].astype(np.float32)
    half.flags.writeable = False
    return half


def _fft() -> tuple[Any, dict[str, Any]]:
    """scipy.fft with every core (it releases the GIL and threads the batch), else NumPy's FFT."""
    try:
        import scipy.fft
    except ImportError:  # pragma: no cover - scipy is optional (installed with the bench extra)
        return np.fft, {}
    return scipy.fft, {"workers": -1}


def filter_projections(
    sinogram: np.ndarray, filter_name: str | None = "ramp", circle: bool = True
) -> np.ndarray:
    """Filtered projections, float32 ``(n_angles, width)`` (width padded as for ``circle``).

    One batched real FFT over every projection; what skimage pads for ``circle=True`` is accounted
    for by reading the (circular) result shifted, so the result is what skimage back-projects.
    """
    if filter_name not in FILTERS:
        raise ValueError(f"unknown filter {filter_name!r}; choose one of {FILTERS}")
    sino = np.asarray(sinogram)
    if sino.ndim != 2:
        raise ValueError(f"a sinogram is 2-D (n_angles, n_detector), got shape {sino.shape}")
    n_angles, n_det = sino.shape
    width, before = circle_pad(n_det) if circle else (n_det, 0)
    size = padded_size(width)
    fft, options = _fft()
    spectrum = fft.rfft(np.asarray(sino, dtype=np.float32), n=size, axis=1, **options)
    spectrum *= _half_spectrum(size, filter_name)
    full = fft.irfft(spectrum, n=size, axis=1, **options)
    # skimage's row holds the projection at [before, before + n_det): column j of its result is column
    # j - before (mod size) of ours
    out = np.empty((n_angles, width), dtype=np.float32)
    out[:, before:] = full[:, : width - before]
    out[:, :before] = full[:, size - before :]
    return out


def _geometry(
    n_det: int, theta: Any, output_size: int | None, circle: bool, center: float | None, n_angles: int
) -> tuple[np.ndarray, int, float]:
    theta_deg = np.linspace(0, 180, n_angles, endpoint=False) if theta is None else np.asarray(theta, float)
    if theta_deg.shape != (n_angles,):
        raise ValueError(f"theta has {theta_deg.size} angles for {n_angles} projections")
    size = default_output_size(n_det, circle) if output_size is None else int(output_size)
    axis = float(n_det // 2 if center is None else center)
    if circle:
        axis += circle_pad(n_det)[1]
    return np.deg2rad(theta_deg), size, axis


def fbp(
    backend: Backend,
    sinogram: np.ndarray,
    theta: Any = None,
    filter_name: str | None = "ramp",
    output_size: int | None = None,
    circle: bool = True,
    center: float | None = None,
) -> np.ndarray:
    """Filtered back-projection of one slice, float32 ``(size, size)``; see the module docstring."""
    sino = np.asarray(sinogram)
    if sino.ndim != 2:
        raise ValueError(f"a sinogram is 2-D (n_angles, n_detector), got shape {sino.shape}")
    n_angles, n_det = sino.shape
    angles, size, axis = _geometry(n_det, theta, output_size, circle, center, n_angles)
    filtered = filter_projections(sino, filter_name, circle)
    out = np.zeros((size, size), dtype=np.float32)
    backend.module.backproject(filtered, angles, axis, circle, out)
    out *= np.float32(np.pi / (2 * n_angles))
    return out


def assemble_sinograms(projections: np.ndarray, rows: Any) -> np.ndarray:
    """Sinograms ``(len(rows), n_angles, n_cols)`` of detector ``rows`` of ``(n_angles, n_rows, n_cols)``."""
    stack = np.asarray(projections)
    if stack.ndim != 3:
        raise ValueError(f"projections are 3-D (n_angles, n_rows, n_cols), got shape {stack.shape}")
    return np.ascontiguousarray(
        stack[:, np.atleast_1d(np.asarray(rows, dtype=np.intp)), :].transpose(1, 0, 2)
    )


def estimate_center(
    projection_0: np.ndarray, projection_180: np.ndarray, min_correlation: float | None = None
) -> float:
    """Rotation-axis position (detector pixels, pixel centres at whole numbers) from projections 180
    degrees apart.

    The 180-degree projection is the 0-degree one mirrored about the axis ``c``: mirrored back, it is
    the 0-degree one delayed by ``s = (n - 1) - 2c``, so ``c = (n - 1 - s) / 2``. ``s`` is the shift at
    which the two agree best: the largest correlation coefficient over the pixels they share at that
    shift (sums over the overlap from an FFT correlation and running sums), among shifts that leave at
    least a quarter of the detector shared, refined to a fraction of a pixel by a parabola through it
    and its neighbours. (A plain cross-correlation peak of mean-subtracted profiles is pulled towards
    shift 0 by the overlap shrinking with the shift: the axis came out up to 0.25 px towards the
    detector's centre. A mean squared difference is least where only empty background overlaps.) 1-D
    rows or 2-D projections (rows are averaged) are accepted; NaN when the projections hold a NaN or
    inf, or agree nowhere (flat), or, with ``min_correlation``, agree best with a correlation coefficient
    below it (rows of air hold nothing but noise, whose best shift is any: an outside probe's axis came
    out 19.5 for a true 67).
    """
    p0 = np.asarray(projection_0, dtype=np.float64)
    p1 = np.asarray(projection_180, dtype=np.float64)
    if p0.shape != p1.shape:
        raise ValueError(f"projections differ in shape: {p0.shape} vs {p1.shape}")
    if p0.ndim == 2:
        p0, p1 = p0.mean(axis=0), p1.mean(axis=0)
    if not (np.all(np.isfinite(p0)) and np.all(np.isfinite(p1))):
        return float("nan")
    n = p0.size
    if n < 4:
        return (n - 1) / 2.0
    offset = 0.5 * (p0.mean() + p1.mean())  # (the sums below lose less to rounding about 0)
    a, b = p0 - offset, p1[::-1] - offset
    size = 2 * n
    # cross[k] = sum_j a[j] b[j + k]: b is a delayed by k where the two agree
    cross = np.fft.irfft(np.conj(np.fft.rfft(a, size)) * np.fft.rfft(b, size), size)

    def running(x: np.ndarray) -> np.ndarray:
        return np.concatenate(([0.0], np.cumsum(x)))

    a1, a2, b1, b2 = running(a), running(a * a), running(b), running(b * b)
    reach = n - max(2, n // 4)  # the largest |shift| considered: a quarter of the detector shared
    shifts = np.arange(-reach, reach + 1)
    shared = n - np.abs(shifts)
    lo = np.maximum(0, shifts)  # b's shared pixels are lo..lo+shared-1; a's are those less the shift
    hi = lo + shared
    sum_a, sum_b = a1[hi - shifts] - a1[lo - shifts], b1[hi] - b1[lo]
    var_a = a2[hi - shifts] - a2[lo - shifts] - sum_a * sum_a / shared
    var_b = b2[hi] - b2[lo] - sum_b * sum_b / shared
    covariance = cross[shifts % size] - sum_a * sum_b / shared
    scale = np.sqrt(np.maximum(var_a, 0.0) * np.maximum(var_b, 0.0))
    tiny = 1e-12 * max(float(np.dot(a, a)), float(np.dot(b, b)), 1e-300)
    r = np.where(scale > tiny, covariance / np.where(scale > tiny, scale, 1.0), -np.inf)
    k = int(np.argmax(r))
    if not np.isfinite(r[k]) or (min_correlation is not None and r[k] < min_correlation):
        return float("nan")
    frac = 0.0
    if 0 < k < r.size - 1 and np.isfinite(r[k - 1]) and np.isfinite(r[k + 1]):
        left, mid, right = r[k - 1], r[k], r[k + 1]
        denom = left - 2 * mid + right
        if denom < 0:
            frac = 0.5 * (left - right) / denom
    return float((n - 1 - (shifts[k] + frac)) / 2.0)


def opposite_projections(theta: Any, tolerance_deg: float = 2.0) -> tuple[int, int] | None:
    """The indices of the two projections of ``theta`` (degrees) closest to 180 degrees apart (the first
    such pair, by the lower index's order), or None when no two are within ``tolerance_deg`` of it."""
    angles = np.asarray(theta, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(angles))
    if ok.size < 2:
        return None
    wrapped = angles[ok] % 360.0
    order = np.argsort(wrapped, kind="stable")
    ring = wrapped[order]
    best: tuple[float, int, int] | None = None
    targets = (wrapped + 180.0) % 360.0
    at = np.searchsorted(ring, targets)
    for i in range(ok.size):  # each angle's nearest partner at +180 (either neighbour, round the circle)
        for k in (at[i] - 1, at[i]):
            j = int(order[k % ring.size])
            if j == i:
                continue
            gap = abs((wrapped[j] - targets[i] + 180.0) % 360.0 - 180.0)
            pair = (min(i, j), max(i, j))
            if best is None or (gap, *pair) < best:
                best = (gap, *pair)
    if best is None or best[0] > tolerance_deg:
        return None
    return int(ok[best[1]]), int(ok[best[2]])


def near_opposite_projections(
    theta: Any, max_gap_deg: float = 5.0, max_weight: float = 1.5
) -> tuple[int, int, int, float] | None:
    """For a scan with no two projections 180 +- 2 degrees apart (a half turn in steps over 2 degrees,
    0 to 177 in 3s): ``(i, j, k, w)`` such that ``p_i + w (p_k - p_i)`` estimates the projection at
    ``theta[j] - 180`` (``k`` the neighbour of ``i`` in angle that brackets it, or the one beyond when
    none does: ``w < 0``, a linear extrapolation), for `estimate_center` against ``p_j``; None when no
    pair is within ``max_gap_deg`` of 180 apart or its estimate would reach further than ``max_weight``
    steps. (Measured on random phantoms of gaussian blobs, 128 columns, 300 each: a 3-degree gap taken
    as it is put the axis over 0.5 px off in 20, corrected so in 1, as often as a 2-degree pair taken
    as it is; a 4-degree gap corrected in 6.)"""
    angles = np.asarray(theta, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(angles))
    if ok.size < 3:
        return None
    wrapped = angles[ok] % 360.0

    def signed(a: np.ndarray | float, b: float) -> Any:  # a - b, in (-180, 180]
        return -((b - np.asarray(a) + 180.0) % 360.0 - 180.0)

    best: tuple[float, int, int, int, float] | None = None
    for j in range(ok.size):
        target = (wrapped[j] - 180.0) % 360.0
        offsets = signed(wrapped, target)  # each projection's angle less the target
        offsets[j] = np.inf
        i = int(np.argmin(np.abs(offsets)))
        gap = abs(float(offsets[i]))
        if gap > max_gap_deg or gap == 0.0:
            continue
        # the neighbour on the target's side, else the nearest beyond i on the other side
        towards = signed(wrapped, wrapped[i]) * -np.sign(offsets[i])  # > 0: from i towards the target
        towards[[i, j]] = np.inf
        same = np.where(towards > 0, towards, np.inf)
        if np.isfinite(same.min()):
            k = int(np.argmin(same))
        else:
            beyond = np.where(towards < 0, -towards, np.inf)
            if not np.isfinite(beyond.min()):
                continue
            k = int(np.argmin(beyond))
        step = float(signed(wrapped[k], wrapped[i]))
        if step == 0.0:
            continue
        w = float(-offsets[i] / step)  # (target - theta_i) / (theta_k - theta_i)
        if abs(w) > max_weight:
            continue
        key = (gap, int(ok[i]), int(ok[j]), int(ok[k]), w)
        if best is None or key[:3] < best[:3]:
            best = key
    if best is None:
        return None
    return best[1], best[2], best[3], best[4]


def estimate_center_from_sinogram(
    sinogram: np.ndarray, theta: Any = None, tolerance_deg: float = 2.0
) -> float:
    """``estimate_center`` on the two projections of an (n_angles, n_det) sinogram closest to 180 degrees
    apart (``opposite_projections``); NaN when no two are within ``tolerance_deg`` of 180 apart (a scan
    short of 180 degrees: the axis cannot be told from it this way)."""
    sino = np.asarray(sinogram)
    n_angles = sino.shape[0]
    angles = np.linspace(0, 180, n_angles, endpoint=False) if theta is None else np.asarray(theta, float)
    pair = opposite_projections(angles, tolerance_deg)
    if pair is None:
        return float("nan")
    return estimate_center(sino[pair[0]], sino[pair[1]])  # either is the other mirrored about the axis


def _angle_key(cos_a: float, sin_a: float) -> tuple[float, float]:
    """An angle's (cos, sin) rounded as ``mirrored_angles`` rounds them (``+ 0.0``: no negative zero)."""
    return round(cos_a, 9) + 0.0, round(sin_a, 9) + 0.0


class StreamingReconstructor:
    """Reconstructs chosen detector rows while projections arrive, back-projecting them in small batches.

    Each projection (``(n_rows, n_cols)``, raw with ``dark``/``flat`` given, else already normalised
    to line integrals) contributes its chosen rows, filtered, to one float32 accumulator per slice.
    Projections are back-projected ``batch`` at a time, filtered with one batched FFT (the kernel sweeps
    four angles per pass over the slice: one at a time would read and write every output pixel once per
    projection instead of once per four). A projection at ``theta`` first waits for its mirror
    ``180 - theta`` (at most ``pair_window`` projections wait; beyond that the oldest goes on alone): the
    kernel back-projects such a pair from one detector position per pixel, about a third cheaper. In a
    scan from 0 to 180 degrees the first half waits for the second.
    ``slices()`` back-projects what is held and returns the reconstruction from every projection added,
    scaled by ``pi / (2 n_seen)``; after every angle of a scan it equals ``fbp`` of the full sinograms.
    ``partial_slices()`` is the same without taking what is held out of waiting (it back-projects a copy),
    for a live view read from another thread.
    """

    def __init__(
        self,
        backend: Backend,
        n_cols: int,
        rows: Any,
        filter_name: str | None = "ramp",
        output_size: int | None = None,
        circle: bool = True,
        center: float | None = None,
        dark: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        batch: int = 16,
        pair_window: int = 256,
    ) -> None:
        if filter_name not in FILTERS:
            raise ValueError(f"unknown filter {filter_name!r}; choose one of {FILTERS}")
        if batch < 1 or pair_window < 0:
            raise ValueError(f"batch must be >= 1 and pair_window >= 0, got {batch}, {pair_window}")
        self.backend = backend
        self.rows = np.atleast_1d(np.asarray(rows, dtype=np.intp))
        self.filter_name = filter_name
        self.circle = circle
        self.n_cols = int(n_cols)
        _, self.size, self.axis = _geometry(self.n_cols, [0.0], output_size, circle, center, 1)
        self.dark = None if dark is None else np.asarray(dark, np.float32)[self.rows]
        self.flat = None if flat is None else np.asarray(flat, np.float32)[self.rows]
        self._accumulators = np.zeros((self.rows.size, self.size, self.size), dtype=np.float32)
        self.batch = int(batch)
        self.pair_window = int(pair_window)
        self._ready: list[tuple[float, np.ndarray]] = []  # (angle in radians, normalised rows)
        self._waiting: dict[int, tuple[tuple[float, float], float, np.ndarray]] = {}  # oldest first
        self._by_key: dict[tuple[float, float], list[int]] = {}  # angle key -> waiting ids
        self._next_id = 0
        self.n_seen = 0  # projections added
        self.n_projected = 0  # projections back-projected into the accumulators
        self._lock = threading.Lock()  # batches going into the accumulators vs a live view copying them

    def add(self, projection: np.ndarray, angle_deg: float) -> None:
        """Add the chosen rows of one projection taken at ``angle_deg`` (back-projected later, in a batch)."""
        proj = np.asarray(projection)
        if proj.ndim != 2 or proj.shape[1] != self.n_cols:
            raise ValueError(f"projection shape {proj.shape} does not have {self.n_cols} columns")
        lines = np.array(proj[self.rows], dtype=np.float32)  # a copy: the caller may reuse its buffer
        if self.dark is not None and self.flat is not None:
            self.backend.flat_field(lines, self.dark, self.flat, lines)
        theta = math.radians(angle_deg)
        cos_a, sin_a = math.cos(theta), math.sin(theta)
        self.n_seen += 1
        partners = self._by_key.get(_angle_key(-cos_a, sin_a)) if self.pair_window else None
        if partners:
            first = partners.pop()
            if not partners:
                del self._by_key[_angle_key(-cos_a, sin_a)]
            _, partner_angle, partner_lines = self._waiting.pop(first)
            self._ready += [(partner_angle, partner_lines), (theta, lines)]
        elif self.pair_window:
            key = _angle_key(cos_a, sin_a)
            self._by_key.setdefault(key, []).append(self._next_id)
            self._waiting[self._next_id] = (key, theta, lines)
            self._next_id += 1
            if len(self._waiting) > self.pair_window:  # the oldest goes on without its mirror
                oldest = next(iter(self._waiting))
                key, old_angle, old_lines = self._waiting.pop(oldest)
                self._by_key[key].remove(oldest)
                if not self._by_key[key]:
                    del self._by_key[key]
                self._ready.append((old_angle, old_lines))
        else:
            self._ready.append((theta, lines))
        if len(self._ready) >= self.batch:
            with self._lock:
                self._project(self._ready, self._accumulators)
                self.n_projected += len(self._ready)
                self._ready = []

    def flush(self) -> None:
        """Back-project every held projection now, mirrored or not."""
        with self._lock:
            held = self._held()
            self._ready, self._waiting, self._by_key = [], {}, {}
            if held:
                self._project(held, self._accumulators)
                self.n_projected += len(held)

    def _held(self) -> list[tuple[float, np.ndarray]]:
        """The projections not yet back-projected: a full batch's worth or fewer, and those waiting for
        their mirror (``list`` of the values: one step under the GIL, safe while another thread adds)."""
        return [*self._ready, *((angle, lines) for _, angle, lines in list(self._waiting.values()))]

    def _project(self, held: list[tuple[float, np.ndarray]], accumulators: np.ndarray) -> None:
        m, n_rows = len(held), self.rows.size
        stack = np.stack([lines for _, lines in held]).reshape(m * n_rows, self.n_cols)
        filtered = filter_projections(stack, self.filter_name, self.circle).reshape(m, n_rows, -1)
        angles = np.array([angle for angle, _ in held], dtype=np.float64)
        for k in range(n_rows):
            sinogram = np.ascontiguousarray(filtered[:, k, :])  # slice k's rows of the held projections
            self.backend.module.backproject(sinogram, angles, self.axis, self.circle, accumulators[k])

    def slices(self) -> np.ndarray:
        """Reconstructions ``(len(rows), size, size)`` from every projection added, float32."""
        self.flush()
        return self.partial_slices()

    def partial_slices(self) -> np.ndarray:
        """Reconstructions from every projection added so far, for a live view read from another thread
        while projections are added: those held (waiting for a batch or for their mirror) are
        back-projected into a copy of the accumulators, which themselves are left as they are. The
        scan's first half waits for its mirrors, so this is what keeps a live slice from staying blank
        for half a scan; it costs the held projections' back-projection (~0.3 ms each at 512 wide) per
        call, on the caller's thread."""
        with self._lock:  # a batch is not half added to what is copied, nor counted twice
            accumulators = self._accumulators.copy()
            held = self._held()
            n = self.n_projected
        if held:
            self._project(held, accumulators)
        n += len(held)
        if n == 0:
            return np.zeros_like(accumulators)
        accumulators *= np.float32(np.pi / (2 * n))
        return accumulators
