"""GPU kernels: numba.cuda kernels on device arrays (CuPy arrays are taken as they are).

Imported only when the GPU backend is asked for; ``probe()`` then says whether it can run here. Under
numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before numba.cuda is first imported) the same
kernels run on the CPU, which is how CI tests them without a GPU, with small launch grids.

Host arrays are copied to the device per call and results copied back; callers that keep frames on
the device (CuPy, or ``to_device``) skip those copies. ``BinSummer.submit`` (the integrators'
``submit_full``, the daemon's powder path) does not wait: the copy of a frame runs on a copy stream
while the previous frame's kernel runs on a compute stream, and the sums come back asynchronously into
pinned memory; the daemon page-locks its frame ring (``pin_host``) so those copies run at the bus's
speed. The bin index, like the integrators' other
setup, lives on the device for the integrator's lifetime. Per-bin sums are float64 throughout: each
thread adds runs of consecutive pixels in registers and issues one atomic add per run of equal bins,
into a shared-memory histogram per block when the bins fit (1D profiles; each block covers one
contiguous band of the frame and adds the bins it touched to the global sums with one atomic each),
else straight into global memory (2D cakes). 16-bit frames with 16-bit bins (1D) go through a packed
kernel instead: one 64-bit load of four pixels and one of their bins per thread, runs summed as integers
into 64-bit integer shared histograms (exact). One launch per frame: the kernel also zeroes the
other of two result buffers, the one the next frame adds into (see ``BinSummer``). The order of the
float64 additions varies from run to run, so float inputs may differ in the last bits between runs;
integer counts sum exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, cast

import numpy as np

if "row_stack" not in np.__dict__:  # numba-cuda releases predating NumPy 2.4 still register np.row_stack
    np.row_stack = np.vstack  # type: ignore[attr-defined]

from numba import cuda

from kernels._numpy_backend import FLAT_FIELD_FLOOR, JUNGFRAU_ADC_MASK, JUNGFRAU_GAIN_BITS

INSTALL_HINT = "pip install 'edge[gpu]'"
SHARED_BINS = 2048  # float64 bins one block keeps in shared memory (2 x 16 KiB with variance)
THREADS = 256
RUN = 4  # consecutive pixels one thread sums in registers before an atomic (bin-sum kernels)
SUM_THREADS = 512  # threads per block of the bin-sum kernels
SUM_BLOCKS_PER_SM = 2
FEED_DEPTH = 2  # frames in flight per summer (``submit``): one copying while the other is summed
PACK = 4  # 16-bit pixels (and bins) per 64-bit word in the packed bin-sum kernel
LOW16 = np.uint64(0xFFFF)
ZERO64 = np.uint64(0)
ONE64 = np.uint64(1)
PACKED_SUMS = os.environ.get("EDGE_GPU_PACKED", "1") != "0"  # off: the plain kernel for every frame


def simulated() -> bool:
    """True when numba's CUDA simulator stands in for a GPU."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def probe() -> None:
    """Raise ImportError (saying how to install) when neither a GPU with CuPy nor the simulator is here."""
    if simulated():
        return
    try:
        import cupy  # noqa: F401
    except ImportError as error:
        raise ImportError(f"CuPy is not installed ({error}); {INSTALL_HINT}") from error
    try:
        available = cuda.is_available()
    except Exception as error:  # pragma: no cover - driver-specific failures
        raise ImportError(f"no usable CUDA device ({error}); {INSTALL_HINT}") from error
    if not available:
        raise ImportError(f"no CUDA device found; {INSTALL_HINT}")


def _grid(n: int, max_blocks: int = 8192) -> tuple[int, int]:
    if simulated():  # every simulated thread is a Python thread: keep the grid tiny
        return max(1, min(2, math.ceil(n / 32))), 32
    return max(1, min(max_blocks, math.ceil(n / THREADS))), THREADS


def _sum_grid(n: int) -> tuple[int, int]:
    """Launch shape of the bin-sum kernels: enough blocks to fill the device once, no more, as each
    block zeroes and flushes a whole shared histogram; fewer for small frames."""
    if simulated():
        return max(1, min(2, math.ceil(n / (RUN * 32)))), 32
    resident = SUM_BLOCKS_PER_SM * int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    return max(1, min(resident, math.ceil(n / (RUN * SUM_THREADS)))), SUM_THREADS


def on_device(array: Any) -> bool:
    """True for device arrays: CuPy, numba's, or the simulator's stand-ins."""
    if hasattr(array, "__cuda_array_interface__"):
        return True
    return type(array).__name__ == "FakeCUDAArray"


def to_device(array: Any) -> Any:
    """A device view of ``array`` (no copy when it already lives on the device)."""
    if type(array).__name__ in ("DeviceNDArray", "FakeCUDAArray"):
        return array
    if on_device(array):  # CuPy and other __cuda_array_interface__ exporters
        return cuda.as_cuda_array(array)
    return cuda.to_device(np.ascontiguousarray(array))


def _flat(array: Any) -> Any:
    device = to_device(array)
    return device.reshape(device.size)


@cuda.jit
def _correct_kernel(raw, dark, gain, out):  # pragma: no cover - compiled for the device
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, raw.size, stride):
        out[i] = (np.float32(raw[i]) - dark[i]) * gain[i]


@cuda.jit
def _jungfrau_kernel(raw, pedestal, gain, out):  # pragma: no cover - compiled for the device
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = raw.size
    for i in range(start, n, stride):
        sample = np.int64(raw[i])
        code = sample >> JUNGFRAU_GAIN_BITS
        adc = np.float32(sample & JUNGFRAU_ADC_MASK)
        if code == 2:
            out[i] = np.float32(0.0)
        else:
            stage = np.int64(2) if code == 3 else code
            out[i] = (adc - pedestal[stage * n + i]) / gain[stage * n + i]


@cuda.jit(device=True)
def _add_runs(values, bins, nbins, with_variance, hist, hist_var):  # pragma: no cover - device
    """Add this thread's pixels into ``hist`` (and ``hist_var``), shared or global, with atomics.

    Each block takes one contiguous stretch of the frame; each thread in it sums ``RUN`` consecutive
    pixels at a time in float64 registers and issues one atomic per run of equal bins (neighbouring
    pixels of a row mostly share a bin), not one per pixel. The ``RUN`` loads are issued together,
    before any atomic, so that enough reads are in flight to keep memory busy.
    """
    n = values.size
    step = RUN * cuda.blockDim.x
    per_block = (n + cuda.gridDim.x - 1) // cuda.gridDim.x
    per_block = (per_block + step - 1) // step * step
    lo = cuda.blockIdx.x * per_block
    hi = min(lo + per_block, n)
    run_bins = cuda.local.array(RUN, np.int32)
    run_values = cuda.local.array(RUN, np.float64)
    for start in range(lo + cuda.threadIdx.x * RUN, hi, step):
        if start + RUN <= hi:
            for j in range(RUN):
                run_bins[j] = np.int32(bins[start + j])
                run_values[j] = np.float64(values[start + j])
            current = run_bins[0]
            acc = run_values[0]
            acc_var = max(1.0, acc)
            for j in range(1, RUN):
                b = run_bins[j]
                v = run_values[j]
                if b != current:
                    if current < nbins:
                        cuda.atomic.add(hist, current, acc)
                        if with_variance:
                            cuda.atomic.add(hist_var, current, acc_var)
                    current = b
                    acc = 0.0
                    acc_var = 0.0
                acc += v
                acc_var += max(1.0, v)
            if current < nbins:
                cuda.atomic.add(hist, current, acc)
                if with_variance:
                    cuda.atomic.add(hist_var, current, acc_var)
        else:  # the block's last, partial run: pixel by pixel
            for i in range(start, hi):
                b = np.int32(bins[i])
                if b < nbins:
                    v = np.float64(values[i])
                    cuda.atomic.add(hist, b, v)
                    if with_variance:
                        cuda.atomic.add(hist_var, b, max(1.0, v))


@cuda.jit(device=True)
def _zero_spare_pair(acc, turn):  # pragma: no cover - device
    """Zero the other (sums, variance) pair of rows of ``acc``, the one the next launch adds into."""
    spare = 2 - 2 * turn
    for b in range(cuda.grid(1), acc.shape[1], cuda.gridsize(1)):
        acc[spare, b] = 0.0
        acc[spare + 1, b] = 0.0


@cuda.jit(device=True)
def _flush_touched(local, local_var, acc, row, with_variance):  # pragma: no cover - device
    """One global atomic per bin this block touched (a block covers a band of rows, not every bin):
    the block's shared sums (float64, or 64-bit integers) added to rows ``row`` and ``row + 1``."""
    for b in range(cuda.threadIdx.x, acc.shape[1], cuda.blockDim.x):
        s = local[b]
        if s:
            cuda.atomic.add(acc, (row, b), np.float64(s))
        if with_variance:
            s = local_var[b]
            if s:
                cuda.atomic.add(acc, (row + 1, b), np.float64(s))


@cuda.jit
def _bin_sums_shared(values, bins, with_variance, acc, turn):  # pragma: no cover - compiled for the device
    local = cuda.shared.array(SHARED_BINS, np.float64)
    local_var = cuda.shared.array(SHARED_BINS, np.float64)
    nbins = acc.shape[1]
    tid = cuda.threadIdx.x
    for b in range(tid, nbins, cuda.blockDim.x):
        local[b] = 0.0
        local_var[b] = 0.0
    _zero_spare_pair(acc, turn)
    cuda.syncthreads()
    _add_runs(values, bins, nbins, with_variance, local, local_var)
    cuda.syncthreads()
    _flush_touched(local, local_var, acc, 2 * turn, with_variance)


@cuda.jit(device=True)
def _add_packed(values4, bins4, nbins, with_variance, hist, hist_var):  # pragma: no cover - device
    """``_add_runs`` for 16-bit frames and 16-bit bins, four pixels to a 64-bit word (``PACK``): each
    thread loads one word of four pixels and one of their four bins, so a warp reads 256 contiguous
    bytes of each with one load each (the plain kernel issues eight two-byte loads per four pixels).
    Words are little-endian: pixel ``4q + j`` sits in bits ``16j..16j+15`` of word ``q``. The pixels
    are integers, so runs are summed as integers and added to ``hist`` (64-bit integers in shared
    memory) with integer atomics: exact, and cheaper than floating-point ones."""
    n = values4.size
    per_block = (n + cuda.gridDim.x - 1) // cuda.gridDim.x
    per_block = (per_block + cuda.blockDim.x - 1) // cuda.blockDim.x * cuda.blockDim.x
    lo = cuda.blockIdx.x * per_block
    hi = min(lo + per_block, n)
    for q in range(lo + cuda.threadIdx.x, hi, cuda.blockDim.x):
        word = values4[q]
        bword = bins4[q]
        current = np.int32(bword & LOW16)
        acc = word & LOW16
        acc_var = max(ONE64, acc)
        for j in range(1, PACK):
            shift = np.uint64(16 * j)
            b = np.int32((bword >> shift) & LOW16)
            v = (word >> shift) & LOW16
            if b != current:
                if current < nbins:
                    cuda.atomic.add(hist, current, acc)
                    if with_variance:
                        cuda.atomic.add(hist_var, current, acc_var)
                current = b
                acc = ZERO64
                acc_var = ZERO64
            acc += v
            acc_var += max(ONE64, v)
        if current < nbins:
            cuda.atomic.add(hist, current, acc)
            if with_variance:
                cuda.atomic.add(hist_var, current, acc_var)


@cuda.jit
def _bin_sums_packed(values4, bins4, with_variance, acc, turn):  # pragma: no cover - compiled for the device
    local = cuda.shared.array(SHARED_BINS, np.uint64)
    local_var = cuda.shared.array(SHARED_BINS, np.uint64)
    nbins = acc.shape[1]
    tid = cuda.threadIdx.x
    for b in range(tid, nbins, cuda.blockDim.x):
        local[b] = ZERO64
        local_var[b] = ZERO64
    _zero_spare_pair(acc, turn)
    cuda.syncthreads()
    _add_packed(values4, bins4, nbins, with_variance, local, local_var)
    cuda.syncthreads()
    # (a block's integer sums, at most 65535 x its pixels, < 2**53, convert to float64 exactly)
    _flush_touched(local, local_var, acc, 2 * turn, with_variance)


@cuda.jit
def _bin_sums_global(values, bins, with_variance, acc, turn):  # pragma: no cover - compiled for the device
    _zero_spare_pair(acc, turn)
    _add_runs(values, bins, acc.shape[1], with_variance, acc[2 * turn], acc[2 * turn + 1])


def correct(raw: Any, dark: Any, gain: Any, out: Any) -> Any:
    """``out = (raw - dark) * gain`` on the device; a host ``out`` gets the result copied back."""
    d_raw, d_dark, d_gain = _flat(raw), _flat(dark), _flat(gain)
    d_out = _flat(out) if on_device(out) else cuda.device_array(d_raw.size, dtype=np.float32)
    blocks, threads = _grid(d_raw.size)
    _correct_kernel[blocks, threads](d_raw, d_dark, d_gain, d_out)
    if not on_device(out):
        d_out.copy_to_host(out.reshape(-1))
    return out


def jungfrau_convert(raw: Any, pedestal: Any, gain: Any, out: Any) -> Any:
    """JUNGFRAU three-gain conversion on the device (see the NumPy reference)."""
    d_raw = _flat(raw if on_device(raw) else np.asarray(raw, dtype=np.uint16))
    d_ped = _flat(pedestal if on_device(pedestal) else np.asarray(pedestal, dtype=np.float32))
    d_gain = _flat(gain if on_device(gain) else np.asarray(gain, dtype=np.float32))
    d_out = _flat(out) if on_device(out) else cuda.device_array(d_raw.size, dtype=np.float32)
    blocks, threads = _grid(d_raw.size)
    _jungfrau_kernel[blocks, threads](d_raw, d_ped, d_gain, d_out)
    if not on_device(out):
        d_out.copy_to_host(out.reshape(-1))
    return out


class BinSummer:
    """Per-bin sums on the device; the bin index is copied to the device once, here.

    One launch per frame, with few array arguments (numba's launch cost grows with each): the kernel
    adds into one of two (sums, variance) pairs of rows of one array, all zeros on entry, and zeroes
    the other pair, which the next call adds into. So no separate zeroing launches.
    """

    def __init__(self, bins: np.ndarray, nbins: int) -> None:
        self.nbins = nbins
        host_bins = np.ascontiguousarray(bins).reshape(-1)
        self.bins = _flat(host_bins)
        self.shared = nbins <= SHARED_BINS
        self.kernel = _bin_sums_shared if self.shared else _bin_sums_global
        blocks, threads = _sum_grid(self.bins.size)
        self._launch = self.kernel[blocks, threads]
        # 16-bit frames go through the packed kernel when the bins fit 16 bits and whole words
        self.packed_bins: Any = None
        if (
            PACKED_SUMS
            and self.shared
            and nbins < 0xFFFF
            and host_bins.size % PACK == 0
            and host_bins.size
            and int(host_bins.max(initial=0)) <= 0xFFFF
            and int(host_bins.min(initial=0)) >= 0
        ):
            self.packed_bins = cuda.to_device(host_bins.astype("<u2").view("<u8"))
            blocks, threads = _sum_grid(self.bins.size // PACK * RUN)
            self._launch_packed = _bin_sums_packed[blocks, threads]
        self._acc = cuda.to_device(np.zeros((4, nbins), dtype=np.float64))
        self._pairs = [(self._acc[2 * turn], self._acc[2 * turn + 1]) for turn in range(2)]
        self._turn = 0
        self._feed: _Feed | None = None  # made on the first ``submit``

    def _packed_view(self, values: Any) -> Any:
        """``values`` (a flat device array) as 64-bit words of four pixels, or None when the packed
        kernel does not apply (not 16-bit, bins too many, or not 8-byte aligned)."""
        if self.packed_bins is None or values.dtype != np.uint16:
            return None
        if not simulated() and values.device_ctypes_pointer.value % 8:
            return None
        return values.view(np.uint64)

    def sums_on_device(self, frame: Any, with_variance: bool) -> tuple[Any, Any]:
        """Launch on a frame (host or device); returns device arrays (sums, variance), valid until the
        next call (two pairs of arrays take turns)."""
        values = _flat(frame)
        if values.size != self.bins.size:
            raise ValueError(f"frame has {values.size} pixels, the bin index {self.bins.size}")
        turn = self._turn
        self._turn = 1 - turn
        words = self._packed_view(values)
        if words is not None:
            self._launch_packed(words, self.packed_bins, with_variance, self._acc, turn)
        else:
            self._launch(values, self.bins, with_variance, self._acc, turn)
        return self._pairs[turn]

    def __call__(self, frame: Any, with_variance: bool) -> tuple[np.ndarray, np.ndarray | None]:
        sums, variance = self.sums_on_device(frame, with_variance)
        return sums.copy_to_host(), (variance.copy_to_host() if with_variance else None)

    def submit(self, frame: Any, with_variance: bool) -> Callable[[], tuple[np.ndarray, np.ndarray | None]]:
        """Start one frame's sums and return a call that waits for them (see ``_Feed``)."""
        if self._feed is None:
            self._feed = _Feed(self)
        return self._feed.submit(frame, with_variance)


class _Pending:
    """One frame's sums on their way back: ``call()`` waits for them (from any thread, once)."""

    def __init__(self, returned: Any, host: np.ndarray, with_variance: bool) -> None:
        self._returned = returned
        self._host = host
        self._with_variance = with_variance
        self._lock = threading.Lock()
        self._value: tuple[np.ndarray, np.ndarray | None] | None = None

    def __call__(self) -> tuple[np.ndarray, np.ndarray | None]:
        with self._lock:
            if self._value is None:
                self._returned.synchronize()
                # copied out of the pinned buffer, which the frame FEED_DEPTH later reuses
                variance = np.array(self._host[1]) if self._with_variance else None
                self._value = (np.array(self._host[0]), variance)
            return self._value


class _Feed:
    """Frames to a ``BinSummer`` without waiting for each: a host frame is copied on a copy stream into
    one of ``FEED_DEPTH`` device buffers while the previous frame's kernel runs on the compute stream
    (which waits for the copy by an event); the sums come back on the compute stream into pinned host
    memory. A copy from pinned memory (the appliance pins its ring, ``pin_host``) runs asynchronously at
    the bus's speed; from pageable memory it is staged and slower, but the same. At most ``FEED_DEPTH``
    frames are in flight: a further submit first waits for the oldest one's sums. The kernel, its launch
    shape and the two accumulator pairs taking turns are the summer's: on one compute stream the sums of
    frame n are copied back before frame n + 1's kernel zeroes their pair."""

    def __init__(self, summer: BinSummer) -> None:
        self.summer = summer
        self.copy_stream = cuda.stream()
        self.compute_stream = cuda.stream()
        blocks, threads = _sum_grid(summer.bins.size)
        self._launch = summer.kernel[blocks, threads, self.compute_stream]
        if summer.packed_bins is not None:
            blocks, threads = _sum_grid(summer.bins.size // PACK * RUN)
            self._launch_packed = _bin_sums_packed[blocks, threads, self.compute_stream]
        self.depth = FEED_DEPTH
        self._copied = [cuda.event() for _ in range(self.depth)]
        self._landing: list[Any] = [None] * self.depth
        self._landing_words: list[Any] = [None] * self.depth  # each landing buffer as packed words
        self._returned = [cuda.event() for _ in range(self.depth)]
        # the two (sums, variance) row pairs of the summer's accumulator, sliced once (a device-array
        # slice costs the host tens of microseconds per frame)
        self._rows = [summer._acc[2 * turn : 2 * turn + 2] for turn in range(2)]
        self._host = [cuda.pinned_array((2, summer.nbins), np.float64) for _ in range(self.depth)]
        self._in_flight: list[_Pending | None] = [None] * self.depth
        self._next = 0

    def submit(self, frame: Any, with_variance: bool) -> _Pending:
        summer = self.summer
        k = self._next
        self._next = (k + 1) % self.depth
        oldest = self._in_flight[k]
        if oldest is not None:
            oldest()  # its buffers are about to be reused: its sums are read out first
        if on_device(frame):
            values = _flat(frame)
            words = summer._packed_view(values)
        else:
            host = np.ascontiguousarray(frame).reshape(-1)
            if host.size != summer.bins.size:
                raise ValueError(f"frame has {host.size} pixels, the bin index {summer.bins.size}")
            landing = self._landing[k]
            if landing is None or landing.dtype != host.dtype:
                landing = self._landing[k] = cuda.device_array(host.size, host.dtype)
                self._landing_words[k] = summer._packed_view(landing)  # made once per buffer
            landing.copy_to_device(host, stream=self.copy_stream)
            self._copied[k].record(self.copy_stream)
            self._copied[k].wait(self.compute_stream)
            values, words = landing, self._landing_words[k]
        if values.size != summer.bins.size:
            raise ValueError(f"frame has {values.size} pixels, the bin index {summer.bins.size}")
        turn = summer._turn
        summer._turn = 1 - turn
        if words is not None:
            self._launch_packed(words, summer.packed_bins, with_variance, summer._acc, turn)
        else:
            self._launch(values, summer.bins, with_variance, summer._acc, turn)
        self._rows[turn].copy_to_host(self._host[k], stream=self.compute_stream)
        returned = self._returned[k]  # reusable: slot k's last frame was read out above
        returned.record(self.compute_stream)
        pending = self._in_flight[k] = _Pending(returned, self._host[k], with_variance)
        return pending


#: numba's ``cuda.pinned``, taken at import: under the CUDA simulator a kernel running on another thread
#: (a mode's warm-up, now beside the pipeline's start) swaps this module's ``cuda`` for the kernels' own
#: fake module, which has no ``pinned`` (the ring's page-locking failed so in a CI run)
_PINNED = cuda.pinned


def pin_host(array: np.ndarray) -> contextlib.AbstractContextManager[Any]:
    """Page-lock ``array``'s memory for the GPU while the context is open (cuMemHostRegister): copies
    from it then run asynchronously, at the bus's speed. The appliance pins its frame ring this way;
    the pages count against the memlock limit (``LimitMEMLOCK=infinity`` in ``systemd/edge.service``)."""
    return cast(contextlib.AbstractContextManager[Any], _PINNED(array))


def histogram(values: Any, bins: Any, npt: int) -> np.ndarray:
    """Sum of ``values`` per bin; bins ``npt`` or more are dropped."""
    host_bins = bins.get() if hasattr(bins, "get") else np.asarray(bins)
    clipped = np.minimum(host_bins.ravel(), npt).astype(np.int32)
    return BinSummer(clipped, npt)(values, False)[0]


# ---- tomography ---------------------------------------------------------------------------------------


@cuda.jit
def _backproject_kernel(filtered, cos_a, sin_a, axis, circle, size, out):  # pragma: no cover - device
    n_angles = filtered.shape[0]
    width = filtered.shape[1]
    radius = size // 2
    top = np.float32(width - 1)
    for p in range(cuda.grid(1), size * size, cuda.gridsize(1)):
        i = p // size
        j = p - i * size
        x = i - radius
        y = j - radius
        if circle and x * x + y * y > radius * radius:
            continue
        acc = np.float32(0.0)
        for a in range(n_angles):
            t = np.float32(axis + y * cos_a[a] - x * sin_a[a])
            if t >= 0 and t <= top:
                k = min(int(t), width - 2)
                f = t - np.float32(k)
                acc += filtered[a, k] + f * (filtered[a, k + 1] - filtered[a, k])
        out[p] += acc


@cuda.jit
def _flat_field_kernel(raw, dark, flat, out, minus_log, floor):  # pragma: no cover - device
    frame = dark.size
    for i in range(cuda.grid(1), raw.size, cuda.gridsize(1)):
        p = i % frame
        denominator = flat[p] - dark[p]
        value = np.float32(1.0)  # no measure of the sample (a dead pixel, a NaN): the NumPy reference
        if denominator > 0:
            ratio = (np.float32(raw[i]) - dark[p]) / denominator
            if math.isfinite(ratio):
                value = ratio
        if minus_log:
            value = -np.float32(math.log(max(value, floor)))
        out[i] = value


def backproject(filtered: Any, angles: np.ndarray, axis: float, circle: bool, out: Any) -> Any:
    """Add the back-projection into ``out`` on the device: one thread per output pixel, all angles."""
    angles = np.asarray(angles, dtype=np.float64)
    size = out.shape[0]
    d_out = _flat(out)
    blocks, threads = _grid(size * size)
    _backproject_kernel[blocks, threads](
        to_device(np.ascontiguousarray(filtered, dtype=np.float32)),
        to_device(np.cos(angles)),
        to_device(np.sin(angles)),
        float(axis),
        circle,
        size,
        d_out,
    )
    if not on_device(out):
        d_out.copy_to_host(out.reshape(-1))
    return out


def flat_field(raw: Any, dark: Any, flat: Any, out: Any, minus_log: bool = True) -> Any:
    """Flat-field normalisation (and -log) on the device; see the NumPy reference."""
    d_out = _flat(out) if on_device(out) else cuda.device_array(int(np.prod(out.shape)), dtype=np.float32)
    d_raw = _flat(raw)
    blocks, threads = _grid(d_raw.size)
    _flat_field_kernel[blocks, threads](
        d_raw,
        _flat(np.asarray(dark, np.float32)),
        _flat(np.asarray(flat, np.float32)),
        d_out,
        minus_log,
        np.float32(FLAT_FIELD_FLOOR),
    )
    if not on_device(out):
        d_out.copy_to_host(out.reshape(-1))
    return out


# ---- peak finding ---------------------------------------------------------------------------------------
# The passes over every pixel run on the device: the ring sums of each clipping pass and the box
# candidates. Only their small results come back (per-ring sums; the candidates' indices; their values
# and 5x5 windows around the peaks), never the frame. Labelling the candidates into peaks (sparse,
# branchy union-find) and the lone-pixel rule then run on the host, in the numba backend's compiled
# code, on those few values.

PEAK_SHARED_RINGS = 2000  # rings whose (count, sum, sum of squares) one block keeps in shared memory
WINDOW = 5  # the lone-pixel rule reads the 5x5 pixels around a peak's rounded centroid

_resident: dict[int, tuple[weakref.ref[np.ndarray], Any]] = {}


def _resident_copy(array: np.ndarray) -> Any:
    """A flat device copy of a host array, made once and kept while the array lives (a finder's ring map:
    8 MiB at 2048^2, not to be sent with every frame)."""
    key = id(array)
    held = _resident.get(key)
    if held is not None and held[0]() is array:
        return held[1]
    device = _flat(np.ascontiguousarray(array))
    _resident[key] = (weakref.ref(array, lambda _gone, key=key: _resident.pop(key, None)), device)
    return device


def _ring_index(rings: Any) -> Any:
    return _flat(rings) if on_device(rings) else _resident_copy(rings)


@cuda.jit(device=True)
def _add_moments(values, rings, upper, hist):  # pragma: no cover - device
    for i in range(cuda.grid(1), values.size, cuda.gridsize(1)):
        r = rings[i]
        v = np.float64(values[i])
        if v < upper[r]:  # never NaN; the masked sentinel's bound is -inf
            cuda.atomic.add(hist, (0, r), 1.0)
            cuda.atomic.add(hist, (1, r), v)
            cuda.atomic.add(hist, (2, r), v * v)


@cuda.jit
def _ring_sums_shared(values, rings, upper, acc):  # pragma: no cover - compiled for the device
    local = cuda.shared.array((3, PEAK_SHARED_RINGS), np.float64)
    n = acc.shape[1]
    for b in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        local[0, b] = 0.0
        local[1, b] = 0.0
        local[2, b] = 0.0
    cuda.syncthreads()
    _add_moments(values, rings, upper, local)
    cuda.syncthreads()
    for b in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        if local[0, b] != 0.0:
            cuda.atomic.add(acc, (0, b), local[0, b])
            cuda.atomic.add(acc, (1, b), local[1, b])
            cuda.atomic.add(acc, (2, b), local[2, b])


@cuda.jit
def _ring_sums_global(values, rings, upper, acc):  # pragma: no cover - compiled for the device
    _add_moments(values, rings, upper, acc)


def ring_sums(frame: Any, rings: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ring: count, sum and sum of squares of the pixels below ``upper[ring]``, summed on the device
    (float64; the order of the additions varies, so float frames may differ in the last bits)."""
    values = _flat(frame)
    n = int(np.asarray(upper).size)
    acc = cuda.to_device(np.zeros((3, n), np.float64))
    kernel = _ring_sums_shared if n <= PEAK_SHARED_RINGS else _ring_sums_global
    blocks, threads = _sum_grid(values.size)  # as many blocks as fit at once: each flushes every ring
    kernel[blocks, threads](values, _ring_index(rings), to_device(np.asarray(upper, np.float64)), acc)
    count, total, total2 = acc.copy_to_host()
    return count.astype(np.int64), total, total2


@cuda.jit(device=True)
def _live_value(values, rings, n_rings, height, width, i, j):  # pragma: no cover - device
    """(value, 1) of a live pixel (inside the frame, not masked, finite), else (0, 0)."""
    if i < 0 or i >= height or j < 0 or j >= width:
        return 0.0, 0.0
    p = i * width + j
    v = np.float64(values[p])
    if rings[p] >= n_rings or not math.isfinite(v):
        return 0.0, 0.0
    return v, 1.0


@cuda.jit(device=True)
def _column(values, rings, n_rings, height, width, i, j):  # pragma: no cover - device
    """Sum and count of the live pixels (i - 1, j), (i, j), (i + 1, j), added in the reference's order."""
    up, n_up = _live_value(values, rings, n_rings, height, width, i - 1, j)
    mid, n_mid = _live_value(values, rings, n_rings, height, width, i, j)
    down, n_down = _live_value(values, rings, n_rings, height, width, i + 1, j)
    return up + mid + down, n_up + n_mid + n_down


@cuda.jit
def _candidates_kernel(
    values, rings, mean, sigma, min_snr, adc, height, width, found, count
):  # pragma: no cover - compiled for the device
    n_rings = mean.size
    for p in range(cuda.grid(1), height * width, cuda.gridsize(1)):
        r = rings[p]
        if r >= n_rings or not math.isfinite(np.float64(values[p])):
            continue
        sd = sigma[r]
        if not sd > 0:
            continue
        i = p // width
        j = p - i * width
        left, n_left = _column(values, rings, n_rings, height, width, i, j - 1)
        centre, n_centre = _column(values, rings, n_rings, height, width, i, j)
        right, n_right = _column(values, rings, n_rings, height, width, i, j + 1)
        total = left + centre + right
        n = n_left + n_centre + n_right
        mu = mean[r]
        if n == 9.0:  # the reference's expressions, operation for operation
            excess = total > max(9.0 * mu + (3.0 * min_snr) * sd, 9.0 * adc)
        else:
            excess = total - n * mu > (min_snr * sd) * math.sqrt(n) and total > n * adc
        if excess:
            k = cuda.atomic.add(count, 0, 1)
            if k < found.size:
                found[k] = p


def find_candidates(
    frame: Any,
    rings: np.ndarray,
    mean: np.ndarray,
    sigma: np.ndarray,
    min_snr: float,
    adc_threshold: float,
) -> np.ndarray:
    """Row-major indices (int64, sorted) of the pixels whose 3x3 box stands out of their ring (see the
    NumPy reference), found on the device; only the indices come back."""
    height, width = (int(x) for x in frame.shape)
    values = _flat(frame)
    index = _ring_index(rings)
    d_mean = to_device(np.ascontiguousarray(mean, np.float64))
    d_sigma = to_device(np.ascontiguousarray(sigma, np.float64))
    capacity = max(4096, height * width // 64)
    blocks, threads = _grid(height * width)
    while True:
        found = cuda.device_array(capacity, np.int64)
        count = cuda.to_device(np.zeros(1, np.int64))
        _candidates_kernel[blocks, threads](
            values, index, d_mean, d_sigma, float(min_snr), float(adc_threshold), height, width, found, count
        )
        total = int(count.copy_to_host()[0])
        if total <= capacity:
            return np.sort(found[:total].copy_to_host()) if total else np.empty(0, np.int64)
        capacity = total  # a frame full of candidates: again, with room for all of them


@cuda.jit
def _gather_kernel(values, index, out):  # pragma: no cover - compiled for the device
    for k in range(cuda.grid(1), index.size, cuda.gridsize(1)):
        out[k] = np.float64(values[index[k]])


def _gather(frame: Any, index: np.ndarray) -> np.ndarray:
    """``frame.ravel()[index]`` as float64, read on the device."""
    out = cuda.device_array(max(1, index.size), np.float64)
    if index.size:
        blocks, threads = _grid(index.size)
        _gather_kernel[blocks, threads](_flat(frame), to_device(np.ascontiguousarray(index, np.int64)), out)
    return out.copy_to_host()[: index.size]


def measure_peaks(
    frame: Any,
    rings: np.ndarray,
    candidates: np.ndarray,
    mean: np.ndarray,
    sigma: np.ndarray,
    width: int,
    min_pixels: int,
    max_pixels: int,
) -> tuple[np.ndarray, ...]:
    """The candidates' components measured on the host from their values, read on the device."""
    from kernels import _numba_backend

    host_rings = _host(rings).ravel()
    return _numba_backend.measure_listed(
        _gather(frame, candidates),
        host_rings[candidates],
        candidates,
        mean,
        sigma,
        width,
        min_pixels,
        max_pixels,
    )


def label_peaks(
    frame: Any, rings: np.ndarray, candidates: np.ndarray, mean: np.ndarray, width: int
) -> tuple[np.ndarray, ...]:
    from kernels import _numba_backend

    values = _gather(frame, candidates)
    return _numba_backend._label_listed(
        values, _host(rings).ravel()[candidates], candidates, mean, int(width)
    )


@cuda.jit
def _windows_kernel(values, rings, n_rings, height, width, rows, cols, out, out_rings):  # pragma: no cover
    # out[WINDOW * k + a, b]: pixel (rows[k] + a - 2, cols[k] + b - 2); outside the frame: NaN, masked
    half = WINDOW // 2
    for t in range(cuda.grid(1), rows.size * WINDOW * WINDOW, cuda.gridsize(1)):
        k = t // (WINDOW * WINDOW)
        q = t - k * WINDOW * WINDOW
        a = q // WINDOW
        b = q - a * WINDOW
        i = rows[k] + a - half
        j = cols[k] + b - half
        if 0 <= i < height and 0 <= j < width:
            out[WINDOW * k + a, b] = np.float64(values[i * width + j])
            out_rings[WINDOW * k + a, b] = rings[i * width + j]
        else:
            out[WINDOW * k + a, b] = math.nan
            out_rings[WINDOW * k + a, b] = n_rings


def lone_peaks(
    frame: Any,
    rings: np.ndarray,
    n_rings: int,
    mean: np.ndarray,
    sigma: np.ndarray,
    clip_snr: float,
    share: float,
    row: np.ndarray,
    col: np.ndarray,
) -> np.ndarray:
    """The lone-pixel rule (see the numba backend's ``lone_peaks``) on the 5x5 pixels around each peak,
    read on the device and stacked into one small image: the rule reads no further than two pixels
    from a peak's rounded centroid, and pixels outside the frame count as masked, as there."""
    from kernels import _numba_backend

    height, width = (int(x) for x in frame.shape)
    m = int(np.asarray(row).size)
    if m == 0:
        return np.zeros(0, bool)
    r = np.clip(np.rint(row), 0, height - 1).astype(np.int64)
    c = np.clip(np.rint(col), 0, width - 1).astype(np.int64)
    out = cuda.device_array((WINDOW * m, WINDOW), np.float64)
    out_rings = cuda.device_array((WINDOW * m, WINDOW), np.int32)
    blocks, threads = _grid(m * WINDOW * WINDOW)
    _windows_kernel[blocks, threads](
        _flat(frame),
        _ring_index(rings),
        int(n_rings),
        height,
        width,
        to_device(r),
        to_device(c),
        out,
        out_rings,
    )
    half = WINDOW // 2
    centres = (WINDOW * np.arange(m) + half).astype(np.float64)
    return _numba_backend.lone_peaks(
        out.copy_to_host(),
        out_rings.copy_to_host(),
        n_rings,
        mean,
        sigma,
        clip_snr,
        share,
        centres,
        np.full(m, float(half)),
    )


# ---- host kernels -------------------------------------------------------------------------------------
# ROI statistics and the preview are host work: the GPU backend runs the numba CPU kernels on a host
# copy of the frame.


def _host(array: Any) -> np.ndarray:
    if hasattr(array, "get"):  # CuPy
        return np.asarray(array.get())
    if hasattr(array, "copy_to_host"):
        return np.asarray(array.copy_to_host())
    return np.asarray(array)


def roi_stats(
    frame: Any, boxes: np.ndarray, offsets: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, ...]:
    from kernels import _numba_backend

    return _numba_backend.roi_stats(_host(frame), boxes, offsets, masks)


def bin_frame(frame: Any, factor: int) -> np.ndarray:
    from kernels import _numba_backend

    return _numba_backend.bin_frame(_host(frame), factor)


def to_uint8(image: np.ndarray, lo: float, hi: float, log: bool) -> np.ndarray:
    from kernels import _numba_backend

    return _numba_backend.to_uint8(_host(image), lo, hi, log)
