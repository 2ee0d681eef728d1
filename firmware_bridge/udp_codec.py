"""UDP detector packet codec: header format, geometry, sans-I/O frame assembler and encoder.

A detector module sends each frame as ``packets_per_frame`` UDP datagrams, each a fixed 40-byte
little-endian header (modelled on PSI's ``sls_detector_header``, see ``docs/wire-formats.md``) followed
by a slice of the module's row-major pixel data. :class:`UdpFrameAssembler` is a pure state machine
(bytes in, events out, no sockets, no clock of its own): it reassembles frames from every module of a
:class:`DetectorGeometry`, inserts the inter-module gap pixels, and accounts for every packet it sees
(accepted, duplicate, late, rejected by reason) and every packet or whole frame it never sees.

The encoder side (:func:`encode_packet`, :func:`packetize_frame`) is what the simulator and the tests
use to produce the same bytes a real module would send. A small length-prefixed capture container
(:func:`encode_capture`, :func:`iter_capture`) stores recorded packet streams for replay tests.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CAPTURE_MAGIC",
    "HEADER_FORMAT",
    "HEADER_SIZE",
    "HEADER_VERSION",
    "MAGIC",
    "REJECT_REASONS",
    "DetectorGeometry",
    "Event",
    "FrameAssembled",
    "FramesLost",
    "PacketHeader",
    "PacketRejected",
    "UdpFrameAssembler",
    "decode_header",
    "encode_capture",
    "encode_packet",
    "iter_capture",
    "packetize_frame",
]

MAGIC: Final = b"EDGU"
HEADER_VERSION: Final = 1
#: magic, header_version, flags, module_id, frame_number, packet_index, packets_per_frame,
#: module_row, module_col, timestamp_ns, payload_length -- 40 bytes, little-endian, no padding.
HEADER_FORMAT: Final = "<4sBBHQIIHHQI"
_HEADER = struct.Struct(HEADER_FORMAT)
HEADER_SIZE: Final = _HEADER.size

CAPTURE_MAGIC: Final = b"EDGUCAP1"
_CAPTURE_LEN = struct.Struct("<I")

# Reasons a packet is rejected, in the order the checks run (the first failing check names it).
REJECT_SHORT_PACKET: Final = "short_packet"
REJECT_BAD_MAGIC: Final = "bad_magic"
REJECT_BAD_VERSION: Final = "bad_version"
REJECT_LENGTH_MISMATCH: Final = "length_mismatch"
REJECT_MODULE_OUT_OF_RANGE: Final = "module_out_of_range"
REJECT_MODULE_POSITION_MISMATCH: Final = "module_position_mismatch"
REJECT_PACKETS_PER_FRAME_MISMATCH: Final = "packets_per_frame_mismatch"
REJECT_PACKET_INDEX_OUT_OF_RANGE: Final = "packet_index_out_of_range"
REJECT_BAD_PAYLOAD_SIZE: Final = "bad_payload_size"
REJECT_FRAME_NUMBER_OUT_OF_RANGE: Final = "frame_number_out_of_range"
# not a check on the packet alone: a jump ahead that no other packet near it confirmed (see the assembler)
REJECT_FRAME_NUMBER_UNCONFIRMED: Final = "frame_number_unconfirmed"
REJECT_REASONS: Final[tuple[str, ...]] = (
    REJECT_SHORT_PACKET,
    REJECT_BAD_MAGIC,
    REJECT_BAD_VERSION,
    REJECT_LENGTH_MISMATCH,
    REJECT_MODULE_OUT_OF_RANGE,
    REJECT_MODULE_POSITION_MISMATCH,
    REJECT_PACKETS_PER_FRAME_MISMATCH,
    REJECT_PACKET_INDEX_OUT_OF_RANGE,
    REJECT_BAD_PAYLOAD_SIZE,
    REJECT_FRAME_NUMBER_OUT_OF_RANGE,
    REJECT_FRAME_NUMBER_UNCONFIRMED,
)
#: packets of unconfirmed jumps held at once; beyond it the oldest is rejected
MAX_HELD_PACKETS: Final = 64
# frames whose rejected packets are remembered until the frame is emitted or recorded lost
REJECTED_FRAMES_KEPT: Final = 4096
#: whole frames' worth of packets of old frames in a row that mean the detector numbers from 0 again
RESTART_FRAMES: Final = 2
#: a held packet of a jump is confirmed by another packet beyond the frames accepted so far whose frame
#: number is within this many frames of its own (under heavy loss the packets that get through after a
#: gap are frames apart; two stray numbers are rarely this close)
CONFIRM_WITHIN_FRAMES: Final = 64

_U16_MAX: Final = 0xFFFF
_I64_MAX: Final = (1 << 63) - 1
_U32_MAX: Final = 0xFFFF_FFFF


# --------------------------------------------------------------------------------------------- geometry


#: after a detector clock started again (`FrameAssembler.forget_previous`), how far beyond the highest
#: frame accepted a frame repeating the acquisition before's timestamp is still taken for this one's
REPEATED_AHEAD = 4


@dataclass(frozen=True)
class DetectorGeometry:
    """Pixel layout of a modular detector and how each module frame is cut into packets.

    Modules are numbered row-major over the ``grid_rows x grid_cols`` grid (``module_id =
    row * grid_cols + col``). Each module frame is ``module_rows x module_cols`` pixels of ``dtype``,
    sent row-major in packets of ``payload_bytes`` (the last packet of a module frame may be shorter).
    The assembled frame places modules on the grid with ``gap_pixels`` blank rows/columns between
    neighbours, like the inter-module gaps of a real multi-module detector.
    """

    module_rows: int = 512
    module_cols: int = 1024
    grid_rows: int = 1
    grid_cols: int = 1
    gap_pixels: int = 2
    dtype: str = "<u2"
    payload_bytes: int = 8192

    def __post_init__(self) -> None:
        for name in ("module_rows", "module_cols", "grid_rows", "grid_cols", "payload_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"DetectorGeometry.{name} must be >= 1, got {getattr(self, name)}")
        if self.gap_pixels < 0:
            raise ValueError(f"DetectorGeometry.gap_pixels must be >= 0, got {self.gap_pixels}")
        dt = np.dtype(self.dtype)
        if dt.kind not in "ui" or dt.itemsize > 8:
            raise ValueError(f"DetectorGeometry.dtype must be an integer type, got {self.dtype!r}")
        if self.payload_bytes % dt.itemsize:
            raise ValueError(
                f"DetectorGeometry.payload_bytes ({self.payload_bytes}) must be a multiple of the "
                f"pixel size ({dt.itemsize} bytes)"
            )
        if self.n_modules - 1 > _U16_MAX or max(self.grid_rows, self.grid_cols) - 1 > _U16_MAX:
            raise ValueError("DetectorGeometry: module ids and grid positions must fit in uint16")
        if self.packets_per_module_frame > _U32_MAX:
            raise ValueError("DetectorGeometry: packets per module frame must fit in uint32")

    @property
    def wire_dtype(self) -> np.dtype[Any]:
        """Pixel dtype on the wire (always little-endian)."""
        return np.dtype(self.dtype).newbyteorder("<")

    @property
    def n_modules(self) -> int:
        """Number of modules in the grid."""
        return self.grid_rows * self.grid_cols

    @property
    def module_shape(self) -> tuple[int, int]:
        """(rows, cols) of one module frame."""
        return (self.module_rows, self.module_cols)

    @property
    def module_pixels(self) -> int:
        """Pixels in one module frame."""
        return self.module_rows * self.module_cols

    @property
    def module_bytes(self) -> int:
        """Bytes of pixel data in one module frame."""
        return self.module_pixels * self.wire_dtype.itemsize

    @property
    def pixels_per_packet(self) -> int:
        """Pixels carried by every packet except possibly the last of a module frame."""
        return self.payload_bytes // self.wire_dtype.itemsize

    @property
    def packets_per_module_frame(self) -> int:
        """Packets one module sends per frame (the header's ``packets_per_frame``)."""
        return -(-self.module_pixels // self.pixels_per_packet)

    @property
    def packets_per_frame(self) -> int:
        """Packets the whole detector sends per frame (all modules)."""
        return self.n_modules * self.packets_per_module_frame

    @property
    def raw_shape(self) -> tuple[int, int]:
        """Shape of the frame with modules butted together, no gaps."""
        return (self.grid_rows * self.module_rows, self.grid_cols * self.module_cols)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Shape of the assembled frame, gaps included."""
        g = self.gap_pixels
        return (
            self.grid_rows * self.module_rows + (self.grid_rows - 1) * g,
            self.grid_cols * self.module_cols + (self.grid_cols - 1) * g,
        )

    def module_position(self, module_id: int) -> tuple[int, int]:
        """(grid row, grid col) of a module."""
        return divmod(module_id, self.grid_cols)

    def module_slices(self, module_id: int, *, gaps: bool = True) -> tuple[slice, slice]:
        """Region of a module in the assembled (``gaps=True``) or raw (``gaps=False``) frame."""
        row, col = self.module_position(module_id)
        g = self.gap_pixels if gaps else 0
        r0 = row * (self.module_rows + g)
        c0 = col * (self.module_cols + g)
        return (slice(r0, r0 + self.module_rows), slice(c0, c0 + self.module_cols))

    def packet_pixel_range(self, packet_index: int) -> tuple[int, int]:
        """[start, stop) of the row-major pixel indices within a module that a packet carries."""
        start = packet_index * self.pixels_per_packet
        return (start, min(start + self.pixels_per_packet, self.module_pixels))

    def packet_payload_size(self, packet_index: int) -> int:
        """Payload bytes of packet ``packet_index`` of a module frame."""
        start, stop = self.packet_pixel_range(packet_index)
        return (stop - start) * self.wire_dtype.itemsize

    def insert_gaps(self, modules: npt.NDArray[Any], fill: Any = 0) -> npt.NDArray[Any]:
        """Place module data (``(n_modules, rows, cols)`` stack or raw frame) into a gapped frame."""
        out = np.full(self.frame_shape, fill, dtype=modules.dtype)
        stack = self.split_modules(modules)
        for m in range(self.n_modules):
            out[self.module_slices(m)] = stack[m]
        return out

    def split_modules(self, frame: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return a ``(n_modules, rows, cols)`` stack from a raw frame, a gapped frame or a stack."""
        stack_shape = (self.n_modules, self.module_rows, self.module_cols)
        if frame.shape == stack_shape:
            return frame
        if frame.shape == self.raw_shape:
            gaps = False
        elif frame.shape == self.frame_shape:
            gaps = True
        else:
            raise ValueError(
                f"frame shape {frame.shape} is neither the raw shape {self.raw_shape}, the assembled "
                f"shape {self.frame_shape} nor the module stack {stack_shape}"
            )
        return np.stack([frame[self.module_slices(m, gaps=gaps)] for m in range(self.n_modules)])


# ------------------------------------------------------------------------------------------- header


@dataclass(frozen=True)
class PacketHeader:
    """The fields of one packet header (see ``docs/wire-formats.md``)."""

    module_id: int
    frame_number: int
    packet_index: int
    packets_per_frame: int
    module_row: int
    module_col: int
    timestamp_ns: int
    payload_length: int
    flags: int = 0
    header_version: int = HEADER_VERSION
    magic: bytes = MAGIC


def encode_packet(
    *,
    module_id: int,
    frame_number: int,
    packet_index: int,
    packets_per_frame: int,
    module_row: int,
    module_col: int,
    timestamp_ns: int,
    payload: bytes | bytearray | memoryview,
    flags: int = 0,
    header_version: int = HEADER_VERSION,
    magic: bytes = MAGIC,
) -> bytes:
    """Build one datagram: the 40-byte header followed by ``payload``.

    ``payload_length`` is taken from ``len(payload)``. Raises ``struct.error`` when a field does not
    fit its wire type.
    """
    body = bytes(payload)
    header = _HEADER.pack(
        magic,
        header_version,
        flags,
        module_id,
        frame_number,
        packet_index,
        packets_per_frame,
        module_row,
        module_col,
        timestamp_ns,
        len(body),
    )
    return header + body


def decode_header(packet: bytes | bytearray | memoryview) -> PacketHeader:
    """Unpack the header of a datagram. Raises ``ValueError`` if it is shorter than the header."""
    if len(packet) < HEADER_SIZE:
        raise ValueError(f"packet of {len(packet)} bytes is shorter than the {HEADER_SIZE}-byte header")
    (magic, version, flags, module_id, frame, pidx, ppf, row, col, ts, plen) = _HEADER.unpack_from(packet)
    return PacketHeader(
        module_id=module_id,
        frame_number=frame,
        packet_index=pidx,
        packets_per_frame=ppf,
        module_row=row,
        module_col=col,
        timestamp_ns=ts,
        payload_length=plen,
        flags=flags,
        header_version=version,
        magic=bytes(magic),
    )


def packetize_frame(
    geometry: DetectorGeometry,
    frame_number: int,
    frame: npt.NDArray[Any],
    timestamp_ns: int = 0,
    *,
    flags: int = 0,
) -> list[bytes]:
    """Split one frame into the datagrams every module would send, module by module.

    ``frame`` may be the raw frame (modules butted together), the assembled frame with gaps (gap pixels
    are not sent) or a ``(n_modules, rows, cols)`` stack; its values are cast to the geometry's dtype.
    """
    stack = geometry.split_modules(np.asarray(frame))
    ppm = geometry.packets_per_module_frame
    packets: list[bytes] = []
    for module_id in range(geometry.n_modules):
        data = np.ascontiguousarray(stack[module_id], dtype=geometry.wire_dtype).tobytes()
        row, col = geometry.module_position(module_id)
        for pidx in range(ppm):
            start, stop = geometry.packet_pixel_range(pidx)
            size = geometry.wire_dtype.itemsize
            packets.append(
                encode_packet(
                    module_id=module_id,
                    frame_number=frame_number,
                    packet_index=pidx,
                    packets_per_frame=ppm,
                    module_row=row,
                    module_col=col,
                    timestamp_ns=timestamp_ns,
                    payload=data[start * size : stop * size],
                    flags=flags,
                )
            )
    return packets


# ------------------------------------------------------------------------------------------- capture


def encode_capture(packets: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """Serialise packets into the capture container: ``b"EDGUCAP1"`` then ``<u32 length><bytes>``..."""
    parts = [CAPTURE_MAGIC]
    for p in packets:
        parts.append(_CAPTURE_LEN.pack(len(p)))
        parts.append(bytes(p))
    return b"".join(parts)


def iter_capture(data: bytes | bytearray | memoryview) -> Iterator[bytes]:
    """Yield the packets of a capture container. Raises ``ValueError`` if it is malformed."""
    view = memoryview(data).cast("B")
    if bytes(view[: len(CAPTURE_MAGIC)]) != CAPTURE_MAGIC:
        raise ValueError("not an edge UDP capture (bad magic)")
    pos = len(CAPTURE_MAGIC)
    while pos < len(view):
        if pos + _CAPTURE_LEN.size > len(view):
            raise ValueError(f"truncated capture: record length at byte {pos}")
        (n,) = _CAPTURE_LEN.unpack_from(view, pos)
        pos += _CAPTURE_LEN.size
        if pos + n > len(view):
            raise ValueError(f"truncated capture: record of {n} bytes at byte {pos}")
        yield bytes(view[pos : pos + n])
        pos += n


# -------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, eq=False)
class FrameAssembled:
    """A frame left the assembler: complete, or incomplete with a mask of the pixels never received.

    ``data`` has the assembled shape (gap pixels are 0, missing pixels are 0). ``missing_mask`` is
    ``None`` for a complete frame; otherwise it is ``True`` exactly on the pixels of missing packets
    (never on gap pixels).
    """

    frame_number: int
    data: npt.NDArray[Any]
    complete: bool
    missing_mask: npt.NDArray[np.bool_] | None
    packets_received: int
    packets_expected: int
    timestamp_ns: int


@dataclass(frozen=True)
class FramesLost:
    """Frames ``first..last`` (inclusive) of which not one valid packet arrived.

    ``reason`` is ``packets_rejected`` when packets of each of them came but every one was rejected;
    ``rejected`` then counts them by rejection reason."""

    first: int
    last: int
    reason: str = "frame_number_jump"
    rejected: tuple[tuple[str, int], ...] = ()

    @property
    def count(self) -> int:
        """Number of frames lost."""
        return self.last - self.first + 1


@dataclass(frozen=True)
class PacketRejected:
    """A datagram failed validation; ``reason`` is one of :data:`REJECT_REASONS`."""

    reason: str
    frame_number: int | None = None


Event = FrameAssembled | FramesLost | PacketRejected


# ----------------------------------------------------------------------------------------- assembler


@dataclass
class _PendingFrame:
    stack: npt.NDArray[Any]  # (n_modules, module_pixels), flat per module
    received: npt.NDArray[np.bool_]  # (n_modules, packets_per_module_frame)
    first_seen: float
    timestamp_ns: int
    n_received: int = 0


@dataclass
class _HeldPacket:
    """A packet of a frame far ahead of the others, held until another packet confirms the jump."""

    frame: int
    module: int
    index: int
    data: bytes
    now: float
    accepted_before: int  # packets_accepted when it came (how long it has waited)
    timestamp_ns: int = 0


@dataclass
class _Counters:
    packets_received: int = 0
    packets_accepted: int = 0
    packets_duplicate: int = 0
    packets_late: int = 0
    packets_rejected: int = 0
    packets_missing: int = 0
    frames_complete: int = 0
    frames_incomplete: int = 0
    frames_lost: int = 0
    #: pending frames made again from packets that outvoted the ones which set their timestamp
    frames_rebased: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))


class UdpFrameAssembler:
    """Reassemble detector frames from UDP datagrams, counting every packet and every loss.

    Completion policy (deterministic, driven only by the packets and the ``now`` values passed in):

    * a frame is emitted complete as soon as its last missing packet arrives;
    * frame ``N`` is finalised when a valid packet of frame ``>= N + frame_timeout_frames`` arrives:
      emitted incomplete (with a missing-pixel mask) if any of its packets arrived, otherwise reported
      in a :class:`FramesLost` range;
    * if ``frame_timeout_s`` is set, ``feed``/``flush`` also finalise every frame up to the highest
      pending frame whose first packet arrived at least ``frame_timeout_s`` before ``now``;
    * ``close`` finalises everything pending (and frames up to ``expected_last_frame``).

    Frames are finalised in frame-number order; the lowest frame not yet finalised is the cursor.
    A packet for a frame below the cursor (or already emitted) is *late* and dropped, unless the frame
    is still in the recent history and that packet had already been received, in which case it is a
    *duplicate*. Without ``expected_first_frame`` the cursor starts at the lowest frame seen when
    the first frame is finalised, so nothing before the first packet is reported lost.

    Complete frames leave at once, so they may overtake an older incomplete frame; a run of lost
    frames may be reported as several adjacent :class:`FramesLost` ranges (each is certain when sent).
    ``max_frame_jump`` (off by default) rejects a packet whose frame number is that far beyond the
    highest frame accepted (or beyond 2**63 - 1), so one packet with a damaged frame number cannot end
    the series early; before the first, beyond ``expected_first_frame``, or without one beyond
    ``jump_from`` (None: the first packet is taken whatever its number).

    A jump within that bound is believed only when confirmed: a packet of a frame more than
    ``frame_timeout_frames`` beyond the highest accepted (before the first: beyond
    ``expected_first_frame``, or ``jump_from``), which would declare the frames between lost, is held
    (``packets_held``) until another packet beyond the frames accepted, of a frame within
    ``frame_timeout_frames`` of it, comes (not a copy of it: the same frame's next packet, or a nearby
    frame's, when the detector really skipped frames or they were lost). Then both are taken, with
    the held packets of frames up to `CONFIRM_WITHIN_FRAMES` below the higher one. If the
    frames in between arrive meanwhile, it was only early and is taken when they reach it. Otherwise,
    once `CONFIRM_WITHIN_FRAMES` frames' worth of packets were accepted after it (or past
    ``frame_timeout_s``), it is rejected, ``frame_number_unconfirmed``: one stray packet never declares
    frames lost nor makes real ones late. ``close`` takes a held packet of a frame up to
    ``expected_last_frame`` (its frames are the series' anyway) and rejects the others.
    A new acquisition whose frame numbers restart needs a new assembler.
    """

    def __init__(
        self,
        geometry: DetectorGeometry,
        *,
        frame_timeout_frames: int = 4,
        frame_timeout_s: float | None = None,
        expected_first_frame: int | None = None,
        history_frames: int = 256,
        max_frame_jump: int | None = None,
        jump_from: int | None = None,
        previous: Mapping[int, int] | None = None,
    ) -> None:
        if frame_timeout_frames < 1:
            raise ValueError(f"frame_timeout_frames must be >= 1, got {frame_timeout_frames}")
        if frame_timeout_s is not None and frame_timeout_s < 0:
            raise ValueError(f"frame_timeout_s must be >= 0, got {frame_timeout_s}")
        if history_frames < 0:
            raise ValueError(f"history_frames must be >= 0, got {history_frames}")
        if max_frame_jump is not None and max_frame_jump < 1:
            raise ValueError(f"max_frame_jump must be >= 1, got {max_frame_jump}")
        self.geometry = geometry
        self.frame_timeout_frames = frame_timeout_frames
        self.frame_timeout_s = frame_timeout_s
        self.history_frames = history_frames
        self.max_frame_jump = max_frame_jump
        self._ppm = geometry.packets_per_module_frame
        self._ppf = geometry.packets_per_frame
        self._itemsize = geometry.wire_dtype.itemsize
        self._payload_sizes = [geometry.packet_payload_size(i) for i in range(self._ppm)]
        self._cursor: int | None = expected_first_frame
        self._pending: dict[int, _PendingFrame] = {}
        # frame -> its packets rejected, by reason, while none of it was accepted: a frame lost with only
        # rejected packets is lost for that reason, not "no packet arrived" (at most REJECTED_FRAMES_KEPT)
        self._rejected_at: dict[int, dict[str, int]] = {}
        # Frames at or above the cursor already emitted (complete ones leave before the cursor moves).
        self._done_ahead: set[int] = set()
        # Recently emitted frames -> received-packet bitmap (None: complete), to tell duplicates from
        # late packets.
        # ... and the frame's timestamp: a packet of it with another timestamp is no copy of its packets
        self._history: OrderedDict[int, tuple[npt.NDArray[np.bool_] | None, int]] = OrderedDict()
        self._highest: int | None = None  # highest frame number accepted so far
        self._highest_ts = 0  # its timestamp (0: not known)
        # frame -> timestamp of the acquisition before this one (its last frames, when the numbers
        # started again with no pause): a packet of one of them is that acquisition's straggler
        self._previous = dict(previous or {})
        self._clock_restarted = False  # `forget_previous`
        self._lowest: int | None = None  # lowest frame number accepted so far
        # before any packet is accepted and with no expected first frame: the frame ``max_frame_jump``
        # counts from (a run that may continue an earlier one counts from that one's last frame)
        self._jump_from = jump_from
        self._held: list[_HeldPacket] = []  # packets of unconfirmed jumps, in arrival order
        # packets in a row of frames well below the newest (duplicates or late): a detector that started
        # numbering again (a new acquisition with no pause between), or copies (packet, when, frame, kind)
        self._old_streak: list[tuple[bytes, float, int, str]] = []
        # packets of a frame pending or recently emitted whose timestamp is not that frame's: another
        # exposure under the same number, a detector numbering from 0 again (a copy has its frame's
        # timestamp). Not cleared by the run's own packets, which may still come in between.
        # (packet, when, frame, kind, packets accepted when it came)
        self._renumbered: list[tuple[bytes, float, int, str, int]] = []
        self._c = _Counters()

    # -- public API ---------------------------------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """Flat snapshot of all counters, including ``packets_rejected_<reason>`` for every reason."""
        c = self._c
        out = {
            "packets_received": c.packets_received,
            "packets_accepted": c.packets_accepted,
            "packets_duplicate": c.packets_duplicate,
            "packets_late": c.packets_late,
            "packets_rejected": c.packets_rejected,
            "packets_missing": c.packets_missing,
            "frames_complete": c.frames_complete,
            "frames_incomplete": c.frames_incomplete,
            "frames_lost": c.frames_lost,
            "frames_rebased": c.frames_rebased,
            "packets_held": len(self._held),
        }
        for reason, n in c.rejected.items():
            out[f"packets_rejected_{reason}"] = n
        return out

    @property
    def rejections(self) -> dict[str, int]:
        """Rejected packets by reason (every reason present, zero included)."""
        return dict(self._c.rejected)

    def _in_step(self, frame: int) -> bool:
        """After `forget_previous`: ``frame`` is at most `REPEATED_AHEAD` beyond the highest accepted."""
        if not self._clock_restarted:
            return False
        highest = -1 if self._highest is None else self._highest
        return frame <= highest + REPEATED_AHEAD

    @property
    def highest_frame(self) -> int | None:
        """The highest frame number a packet was accepted for (None before any)."""
        return self._highest

    def recent_timestamps(self) -> dict[int, int]:
        """Frame -> timestamp of the frames pending and recently emitted (nonzero ones): what a next
        assembler is given as ``previous`` when the numbers start again."""
        out = {frame: ts for frame, (_received, ts) in self._history.items() if ts}
        out.update((frame, p.timestamp_ns) for frame, p in self._pending.items() if p.timestamp_ns)
        return out

    @property
    def lowest_frame(self) -> int | None:
        """The lowest frame number a packet was accepted for (None before any): a run's first frame,
        also when its first packets confirmed a jump together (frame 30 held, then 31 confirming it)."""
        return self._lowest

    @property
    def pending_frames(self) -> list[int]:
        """Frame numbers currently being assembled, ascending."""
        return sorted(self._pending)

    def feed(self, packet: bytes | bytearray | memoryview, now: float = 0.0) -> list[Event]:
        """Process one datagram received at time ``now`` (seconds, any monotonic clock)."""
        self._c.packets_received += 1
        events: list[Event] = []
        view = _as_bytes_view(packet)
        reason, frame = self._validate(view)
        if reason is not None:
            self._reject(reason, frame, events)
        elif frame is not None and self._jump(frame):
            if self._straggler(frame, _HEADER.unpack_from(view)[9]):  # far ahead, the acquisition before's
                self._c.packets_late += 1
            else:
                self._hold_or_confirm(view, frame, now, events)
        else:
            self._accept(view, now, events)
            if self._held:
                self._release_held(now, events)
        if self.frame_timeout_s is not None:
            self._finalise_timed_out(now, events)
        return events

    def check(self, packet: bytes | bytearray | memoryview) -> tuple[str | None, int | None, int, int]:
        """(rejection reason or None, frame number, module id, packet index) of ``packet``, as ``feed``
        would validate it, without taking it or counting it."""
        view = _as_bytes_view(packet)
        reason, frame = self._validate(view)
        if reason is not None:
            return reason, frame, -1, -1
        fields = _HEADER.unpack_from(view)
        return None, frame, fields[3], fields[5]

    def flush(self, now: float) -> list[Event]:
        """Finalise frames that timed out by ``now`` (needs ``frame_timeout_s``); call when idle."""
        events: list[Event] = []
        if self.frame_timeout_s is not None:
            self._finalise_timed_out(now, events)
        return events

    def forget_previous(self) -> None:
        """The acquisition before's timestamps tell less now (a detector whose clock started again
        repeats them): a packet with its frame's timestamp there is this acquisition's when its frame is
        in step with it (at most `REPEATED_AHEAD` beyond the highest frame accepted), and that
        acquisition's late copy when far ahead (frame 19 of it arriving while this one is at frame 3)."""
        self._clock_restarted = True

    def begin_at(self, frame: int) -> None:
        """Count this acquisition's frames from ``frame`` (before any frame is finalised): frames below it
        belong to an earlier run (a series resumed after a restart) and are never reported lost here."""
        if self._c.frames_incomplete or self._c.frames_lost:
            raise RuntimeError("begin_at after frames were finalised")
        if any(n < frame for n in chain(self._pending, self._done_ahead)):
            raise ValueError(f"frames below {frame} were accepted")
        self._cursor = frame

    def close(self, expected_last_frame: int | None = None, reason: str = "series_end") -> list[Event]:
        """Finalise every pending frame, and report frames up to ``expected_last_frame`` as lost (with
        ``reason``: the series ended without them, or the receiver stopped before they came).

        The assembler stays usable; packets for frames finalised here count as late afterwards.
        """
        events: list[Event] = []
        held, self._held = self._held, []
        for packet in held:  # jumps no packet confirmed: taken only within the series' frames
            if expected_last_frame is not None and packet.frame <= expected_last_frame:
                self._accept(memoryview(packet.data), packet.now, events)
            else:
                self._reject(REJECT_FRAME_NUMBER_UNCONFIRMED, packet.frame, events)
        highest = max(chain(self._pending, self._done_ahead), default=None)
        if highest is not None:
            self._finalise_below(highest + 1, events)
        if expected_last_frame is not None:
            if self._cursor is None:
                self._cursor = expected_last_frame + 1  # nothing seen: we cannot say where it began
            else:
                self._finalise_below(expected_last_frame + 1, events, reason=reason)
        if self._cursor is not None and self._rejected_at:
            # after the last frame taken (and the armed tail): frames whose packets came and were all
            # rejected did come: lost for that reason (following on within the frame window; an outside
            # probe's frames 6 and 7 rejected at a run's end, or frame 11 of a run armed for 10, had no
            # record at all)
            reach = self._cursor
            for n in sorted(k for k in self._rejected_at if k >= self._cursor):
                if n - reach > self.frame_timeout_frames:
                    break
                reach = n + 1
            if reach > self._cursor:
                self._finalise_below(reach, events)
        return events

    # -- validation ---------------------------------------------------------------------------------

    def _validate(self, view: memoryview) -> tuple[str | None, int | None]:
        if len(view) < HEADER_SIZE:
            return REJECT_SHORT_PACKET, None
        (magic, version, _flags, module_id, frame, pidx, ppf, row, col, _ts, plen) = _HEADER.unpack_from(view)
        if magic != MAGIC:
            return REJECT_BAD_MAGIC, None
        if version != HEADER_VERSION:
            return REJECT_BAD_VERSION, frame
        if plen != len(view) - HEADER_SIZE:
            return REJECT_LENGTH_MISMATCH, frame
        if module_id >= self.geometry.n_modules:
            return REJECT_MODULE_OUT_OF_RANGE, frame
        if (row, col) != self.geometry.module_position(module_id):
            return REJECT_MODULE_POSITION_MISMATCH, frame
        if ppf != self._ppm:
            return REJECT_PACKETS_PER_FRAME_MISMATCH, frame
        if pidx >= self._ppm:
            return REJECT_PACKET_INDEX_OUT_OF_RANGE, frame
        if plen != self._payload_sizes[pidx]:
            return REJECT_BAD_PAYLOAD_SIZE, frame
        if self.max_frame_jump is not None:
            reference = self._highest if self._highest is not None else self._cursor
            # before any packet was accepted, a run that may continue an earlier one (``jump_from``) is
            # not bounded from it: silence ended that run, and a detector whose counter went on far
            # beyond (never reset, idle a million frame periods) starts a new acquisition there. A jump
            # is still taken only once another packet confirms it (`_hold_or_confirm`): one stray packet
            # opens nothing
            limit = _I64_MAX if reference is None else min(reference + self.max_frame_jump, _I64_MAX)
            # and never beyond int64 (what a store or a database holds), however far the run has got
            if frame > limit and (reference is not None or self._jump_from is not None):
                return REJECT_FRAME_NUMBER_OUT_OF_RANGE, frame
        return None, frame

    # -- numbers that start again ---------------------------------------------------------------------

    def _note_old(self, old: bool, view: memoryview, now: float, frame: int, kind: str) -> None:
        if not old:
            self._old_streak.clear()
            return
        if len(self._old_streak) <= RESTART_FRAMES * self._ppf:
            self._old_streak.append((bytes(view), now, frame, kind))

    @property
    def restarted(self) -> bool:
        """Whether the frame numbers started again. Either a whole frame's worth of packets (two at least)
        of frames this assembler holds or recently emitted, each with another timestamp than its frame's
        (another exposure under the same number), whatever came in between; or, for frames too old to be
        remembered or from a sender whose timestamps are 0, `RESTART_FRAMES` whole frames' worth of
        packets in a row, of at least two frames, all well below the newest frame (more than
        ``frame_timeout_frames``), each a copy of a packet taken or late. A network's copies come one at
        a time, and a copy has its frame's timestamp."""
        if len(self._renumbered) >= max(self._ppf, 2):
            return True
        streak = self._old_streak
        return len(streak) >= RESTART_FRAMES * self._ppf and len({item[2] for item in streak}) >= 2

    def take_restart(self) -> list[tuple[bytes, float]]:
        """The packets of a restart (`restarted`), taken out of this assembler's counts (they belong to
        the acquisition that started again), to feed to a new one with their times, in arrival order."""
        renumbered = [(data, now, frame, kind) for data, now, frame, kind, _at in self._renumbered]
        streak: list[tuple[bytes, float, int, str]] = []
        if len(self._old_streak) >= RESTART_FRAMES * self._ppf:
            streak, self._old_streak = self._old_streak, []
        taken = renumbered + streak
        self._renumbered = []
        taken.sort(key=lambda item: item[1])  # (stable: the times are the reader's, in arrival order)
        c = self._c
        for _data, _now, _frame, kind in taken:
            c.packets_received -= 1
            if kind == "duplicate":
                c.packets_duplicate -= 1
            else:
                c.packets_late -= 1
        return [(data, now) for data, now, _frame, _kind in taken]

    def _outvoted(
        self, frame: int, pending: _PendingFrame, ts: int, view: memoryview, now: float, events: list[Event]
    ) -> bool:
        """A packet of pending ``frame`` with another timestamp than the frame's: when, with it, more of
        the frame's packets agree on ``ts`` than on the frame's own, and those are fewer than half the
        frame's packets, the frame's packets so far were the odd ones (one packet of another exposure
        came first and set the frame's timestamp, and the frame's own packets were taken for a detector
        numbering again: a restart, a run split in two). They are dropped, counted late, and the frame
        is made again from the others (True)."""
        rivals = [
            item for item in self._renumbered if item[2] == frame and _HEADER.unpack_from(item[0])[9] == ts
        ]
        if len(rivals) + 1 <= pending.n_received or 2 * pending.n_received >= self._ppf:
            # (a frame half there or more is the frame: packets of another exposure under its number are
            # a detector numbering again, once a whole frame of them came, `restarted`)
            return False
        c = self._c
        c.packets_accepted -= pending.n_received
        c.packets_late += pending.n_received
        for _data, _when, _frame, kind, _at in rivals:
            if kind == "duplicate":
                c.packets_duplicate -= 1
            else:
                c.packets_late -= 1
        self._renumbered = [item for item in self._renumbered if not any(item is r for r in rivals)]
        del self._pending[frame]
        if self._highest == frame:
            self._highest_ts = ts
        self._c.frames_rebased += 1
        for data, when, _frame, _kind, _at in rivals:
            self._accept(memoryview(data), when, events)
        self._accept(view, now, events)
        return True

    def _note_renumbered(self, view: memoryview, now: float, frame: int, kind: str) -> None:
        """A packet of a remembered frame with another timestamp (see `restarted`); kept a while."""
        accepted = self._c.packets_accepted
        patience = CONFIRM_WITHIN_FRAMES * self._ppf
        self._renumbered = [item for item in self._renumbered if accepted - item[4] <= patience]
        if len(self._renumbered) <= RESTART_FRAMES * self._ppf:
            self._renumbered.append((bytes(view), now, frame, kind, accepted))

    # -- unconfirmed jumps ----------------------------------------------------------------------------

    def _reject(self, reason: str, frame: int | None, events: list[Event]) -> None:
        self._c.packets_rejected += 1
        self._c.rejected[reason] += 1
        events.append(PacketRejected(reason, frame))
        if frame is not None and (self._cursor is None or frame >= self._cursor):
            reasons = self._rejected_at.setdefault(frame, {})
            reasons[reason] = reasons.get(reason, 0) + 1
            if len(self._rejected_at) > REJECTED_FRAMES_KEPT:  # (the oldest first: its gap came first)
                del self._rejected_at[next(iter(self._rejected_at))]

    def _reach(self) -> int | None:
        """The highest frame a packet may have without being a jump to confirm (None: any)."""
        reference = self._highest if self._highest is not None else self._cursor
        if reference is None:
            reference = self._jump_from
        return None if reference is None else reference + self.frame_timeout_frames

    def _jump(self, frame: int) -> bool:
        reach = self._reach()
        return reach is not None and frame > reach

    def _hold_or_confirm(self, view: memoryview, frame: int, now: float, events: list[Event]) -> None:
        fields = _HEADER.unpack_from(view)
        module_id, pidx = fields[3], fields[5]
        if any((h.frame, h.module, h.index) == (frame, module_id, pidx) for h in self._held):
            self._c.packets_duplicate += 1  # the same packet again confirms nothing
            return
        # a detector that jumped goes on from there: the same frame's next packet, or one of the next
        # few frames (two stray numbers were once 10 apart and confirmed each other: frames declared lost)
        close = [h for h in self._held if abs(h.frame - frame) <= self.frame_timeout_frames]
        if not close:
            held = _HeldPacket(frame, module_id, pidx, bytes(view), now, self._c.packets_accepted, fields[9])
            self._held.append(held)
            if len(self._held) > MAX_HELD_PACKETS:
                self._drop_held(0, events)
            return
        # confirmed: the frames between really did not come. Held packets of frames the jump passed on
        # its way (under heavy loss, frames apart) are taken too, lowest first, so none of them is late.
        top = max(frame, *(h.frame for h in close))
        passed = [h for h in self._held if h not in close and top - CONFIRM_WITHIN_FRAMES <= h.frame < top]
        taken: list[tuple[int, memoryview, float, int]] = [(frame, view, now, fields[9])]
        for h in [*close, *passed]:
            self._held.remove(h)
            taken.append((h.frame, memoryview(h.data), h.now, h.timestamp_ns))
        for taken_frame, data, when, ts in sorted(taken, key=lambda item: item[0]):
            if self._before_newest(ts):
                self._reject(REJECT_FRAME_NUMBER_UNCONFIRMED, taken_frame, events)
            else:
                self._accept(data, when, events)
        self._release_held(now, events)

    def _before_newest(self, ts: int) -> bool:
        """Whether a packet ahead of the newest frame was exposed before it (both timestamps set): not
        this acquisition's next frames but a stray number (a damaged packet held as a jump)."""
        return bool(ts and self._highest_ts and ts < self._highest_ts)

    def _release_held(self, now: float, events: list[Event]) -> None:
        """Held packets the accepted frames have caught up with are taken (they were early); those
        that waited `CONFIRM_WITHIN_FRAMES` frames' worth of accepted packets (or ``frame_timeout_s``)
        are rejected."""
        patience = CONFIRM_WITHIN_FRAMES * self._ppf
        while self._held:
            reach = self._reach()
            # below the reach: taken, it finalises no frame the accepted ones may still be completing (at
            # the reach it would finalise the newest, whose packets were still coming: they became late)
            early = next((h for h in self._held if reach is None or h.frame < reach), None)
            if early is None:
                break
            self._held.remove(early)
            if self._before_newest(early.timestamp_ns):
                self._reject(REJECT_FRAME_NUMBER_UNCONFIRMED, early.frame, events)
            else:
                self._accept(memoryview(early.data), early.now, events)
        timeout = self.frame_timeout_s
        while self._held and (
            self._c.packets_accepted - self._held[0].accepted_before > patience
            or (timeout is not None and now - self._held[0].now >= timeout)
        ):
            self._drop_held(0, events)

    def _drop_held(self, index: int, events: list[Event]) -> None:
        held = self._held.pop(index)
        self._reject(REJECT_FRAME_NUMBER_UNCONFIRMED, held.frame, events)

    # -- state machine ------------------------------------------------------------------------------

    def _straggler(self, frame: int, ts: int) -> bool:
        """A packet of ``frame`` with timestamp ``ts``, the one the acquisition before gave that frame (and
        not in step with this one's frames: `forget_previous`): that acquisition's straggler."""
        return bool(ts) and self._previous.get(frame) == ts and not self._in_step(frame)

    def _accept(self, view: memoryview, now: float, events: list[Event]) -> None:
        (_m, _v, _f, module_id, frame, pidx, _ppf, _r, _c, ts, _plen) = _HEADER.unpack_from(view)
        c = self._c
        if self._straggler(frame, ts):
            c.packets_late += 1  # the acquisition before's: a straggler of it
            return
        remembered = self._history.get(frame)
        pending = self._pending.get(frame)
        known = pending.timestamp_ns if pending is not None else (remembered[1] if remembered else None)
        # a frame's timestamps are compared when its own is set (a sender may send 0 throughout): a copy
        # carries its frame's timestamp, so a 0 under a set one is another exposure too (a detector gone
        # to a mode without its clock: its new acquisition's frames were dropped as copies)
        if known and ts != known:  # not a packet of that frame: another exposure, same number
            if pending is not None and self._outvoted(frame, pending, ts, view, now, events):
                return
            seen = remembered is not None and (remembered[0] is None or remembered[0][module_id, pidx])
            seen = seen or (pending is not None and bool(pending.received[module_id, pidx]))
            kind = "duplicate" if seen else "late"
            if kind == "duplicate":
                c.packets_duplicate += 1
            else:
                c.packets_late += 1
            self._note_renumbered(view, now, frame, kind)
            return
        # well below the newest, for a frame whose timestamp tells nothing (too old to be remembered, or 0)
        old = not known and self._highest is not None and frame + self.frame_timeout_frames < self._highest
        if frame in self._done_ahead:  # emitted complete, so this packet was received before
            c.packets_duplicate += 1
            self._note_old(old, view, now, frame, "duplicate")
            return
        if remembered is not None:
            received = remembered[0]
            if received is None or received[module_id, pidx]:
                c.packets_duplicate += 1
                self._note_old(old, view, now, frame, "duplicate")
            else:
                c.packets_late += 1
                self._note_old(old, view, now, frame, "late")
            return
        if self._cursor is not None and frame < self._cursor:
            c.packets_late += 1
            self._note_old(old, view, now, frame, "late")
            return
        self._old_streak.clear()  # a packet of the frames going on: whatever came before was stray
        # A packet far enough ahead finalises older frames before it is stored.
        self._finalise_below(frame - self.frame_timeout_frames + 1, events)
        if pending is None:
            g = self.geometry
            pending = _PendingFrame(
                stack=np.zeros((g.n_modules, g.module_pixels), dtype=g.wire_dtype),
                received=np.zeros((g.n_modules, self._ppm), dtype=np.bool_),
                first_seen=now,
                timestamp_ns=ts,
            )
            self._pending[frame] = pending
        if pending.received[module_id, pidx]:
            c.packets_duplicate += 1
            return
        start, stop = self.geometry.packet_pixel_range(pidx)
        pending.stack[module_id, start:stop] = np.frombuffer(
            view, dtype=self.geometry.wire_dtype, count=stop - start, offset=HEADER_SIZE
        )
        pending.received[module_id, pidx] = True
        if self._highest is None or frame > self._highest:
            self._highest = frame
            self._highest_ts = ts
        if self._lowest is None or frame < self._lowest:
            self._lowest = frame
        pending.n_received += 1
        c.packets_accepted += 1
        if pending.n_received == self._ppf:
            del self._pending[frame]
            events.append(self._emit(frame, pending))
            self._done_ahead.add(frame)
            self._advance_cursor()

    def _finalise_timed_out(self, now: float, events: list[Event]) -> None:
        assert self.frame_timeout_s is not None
        timeout = self.frame_timeout_s
        while self._held and now - self._held[0].now >= timeout:
            self._drop_held(0, events)
        expired = [n for n, p in self._pending.items() if now - p.first_seen >= timeout]
        if expired:
            self._finalise_below(max(expired) + 1, events)

    def _finalise_below(self, limit: int, events: list[Event], reason: str = "frame_number_jump") -> None:
        """Finalise every frame numbered below ``limit``: emit pending ones, report unseen ones lost.

        Visits only the frames it knows about, so a jump of any size costs O(pending frames).
        """
        if self._cursor is None:
            lowest = min(chain(self._pending, self._done_ahead), default=None)
            if lowest is None or limit <= lowest:
                return
            self._cursor = lowest
        if limit <= self._cursor:
            return
        known = sorted(n for n in chain(self._pending, self._done_ahead) if n < limit)
        next_frame = self._cursor
        for n in known:
            if n > next_frame:
                self._report_lost(next_frame, n - 1, events, reason)
            pending = self._pending.pop(n, None)
            if pending is not None:
                events.append(self._emit(n, pending))
            else:
                self._done_ahead.discard(n)
            next_frame = n + 1
        if next_frame < limit:
            self._report_lost(next_frame, limit - 1, events, reason)
        self._cursor = limit
        self._advance_cursor()

    def _report_lost(self, first: int, last: int, events: list[Event], reason: str) -> None:
        count = last - first + 1
        self._c.frames_lost += count
        self._c.packets_missing += count * self._ppf
        rejected = sorted(n for n in self._rejected_at if first <= n <= last) if self._rejected_at else []
        start = first
        i = 0
        while i < len(rejected):  # runs of frames whose every packet was rejected: lost for that reason
            j = i
            while j + 1 < len(rejected) and rejected[j + 1] == rejected[j] + 1:
                j += 1
            if rejected[i] > start:
                events.append(FramesLost(start, rejected[i] - 1, reason))
            why: dict[str, int] = {}
            for n in rejected[i : j + 1]:
                for what, times in self._rejected_at.pop(n).items():
                    why[what] = why.get(what, 0) + times
            events.append(
                FramesLost(rejected[i], rejected[j], "packets_rejected", tuple(sorted(why.items())))
            )
            start, i = rejected[j] + 1, j + 1
        if start <= last:
            events.append(FramesLost(start, last, reason))

    def _advance_cursor(self) -> None:
        if self._cursor is None:
            return
        while self._cursor in self._done_ahead:
            self._done_ahead.discard(self._cursor)
            self._cursor += 1

    def _emit(self, frame: int, pending: _PendingFrame) -> FrameAssembled:
        self._rejected_at.pop(frame, None)  # (it came: some of its packets were good)
        g = self.geometry
        c = self._c
        stack = pending.stack.reshape(g.n_modules, g.module_rows, g.module_cols)
        data = g.insert_gaps(stack)
        complete = pending.n_received == self._ppf
        mask: npt.NDArray[np.bool_] | None = None
        if complete:
            c.frames_complete += 1
            self._remember(frame, None, pending.timestamp_ns)
        else:
            c.frames_incomplete += 1
            c.packets_missing += self._ppf - pending.n_received
            self._remember(frame, pending.received, pending.timestamp_ns)
            pixel_missing = np.repeat(~pending.received, g.pixels_per_packet, axis=1)[:, : g.module_pixels]
            mask = g.insert_gaps(pixel_missing.reshape(g.n_modules, g.module_rows, g.module_cols), False)
        return FrameAssembled(
            frame_number=frame,
            data=data,
            complete=complete,
            missing_mask=mask,
            packets_received=pending.n_received,
            packets_expected=self._ppf,
            timestamp_ns=pending.timestamp_ns,
        )

    def _remember(self, frame: int, received: npt.NDArray[np.bool_] | None, timestamp_ns: int) -> None:
        if self.history_frames == 0:
            return
        self._history[frame] = (received, timestamp_ns)
        while len(self._history) > self.history_frames:
            self._history.popitem(last=False)


def _as_bytes_view(packet: bytes | bytearray | memoryview) -> memoryview:
    """A flat, contiguous, byte-format view of ``packet`` (copies only if it is not contiguous)."""
    view = memoryview(packet)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view
