"""Typed settings, parsed once at start from TOML, then ``EDGE_*`` environment, then CLI flags.

Later sources win. Nested keys use ``__`` in the environment (``EDGE_RING__SLOTS=128``) and dots on the
command line (``--set ring.slots=128``). A bad value stops the program at start with the key, the value
and what is allowed.
"""

from __future__ import annotations

import contextvars
import difflib
import ipaddress
import math
import os
import re
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from edge.errors import ConfigError
from edge.upstream.protocol import CONSUMER_NAME, MAX_CHUNK_BYTES

LOCALHOST = "127.0.0.1"


def _zmq_endpoint(value: str, connect: bool) -> str:
    """A ZeroMQ endpoint, checked when the settings are read rather than by the first socket that uses
    it (a reader thread failing again and again, or a traceback at start): ``tcp://HOST:PORT``,
    ``ipc://PATH`` or ``inproc://NAME``; ``*`` (any address, any port) only where the socket binds."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
        raise ValueError(f"{value!r} is not a ZeroMQ endpoint: tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port == "*" or (port.isdigit() and int(port) <= 65535)):
            raise ValueError(f"{value!r}: a tcp endpoint is tcp://HOST:PORT with PORT 0..65535 (or *)")
        bare = host.split(";")[-1]
        if connect and "*" in (bare, port):
            raise ValueError(f"{value!r}: this socket connects, so it needs a host and a port, not *")
        if bare.replace(".", "").isdigit():  # a dotted quad: an IPv4 address, checked as one
            try:
                ipaddress.IPv4Address(bare)
            except ValueError:
                raise ValueError(f"{value!r}: {bare} is not an IPv4 address") from None
    return value


#: a ZeroMQ endpoint setting of a socket that binds (the simulator's stream, the upstream server)
BindEndpoint = Annotated[str, AfterValidator(lambda value: _zmq_endpoint(value, connect=False))]
#: a ZeroMQ endpoint setting of a socket that connects (the stream reader, the pull client)
ConnectEndpoint = Annotated[str, AfterValidator(lambda value: _zmq_endpoint(value, connect=True))]


def _plain_types(annotation: Any) -> set[Any]:
    """The classes an annotation admits, through ``Optional``, unions and ``Annotated``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _plain_types(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return set().union(*(_plain_types(arg) for arg in get_args(annotation)))
    return {annotation} if origin is None else {origin}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no inf, no NaN

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``true`` where a number belongs is a mistake, not 1 (pydantic's lax mode would take it)."""
        if isinstance(value, bool) and info.field_name is not None:
            admits = _plain_types(cls.model_fields[info.field_name].annotation)
            if bool not in admits and admits & {int, float}:
                raise ValueError("a number is needed, not true/false")
        elif isinstance(value, list | tuple) and info.field_name is not None and _holds_bool(value):
            # the numbers of a list (ROI boxes, tomography slices): the same rule, one level down or two
            leaves = _leaf_types(cls.model_fields[info.field_name].annotation)
            if bool not in leaves and leaves & {int, float}:
                raise ValueError("numbers are needed, not true/false")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _empty_file_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """An optional file or directory given as "" is unset (`--set pull.curve_secret_file=` on the
        command line clears a file's value), never Path("") = "." (an outside probe: "Is a directory";
        another: an empty ``upstream.curve_clients_dir`` admitted the keys of the working directory)."""
        optional_path = (info.field_name or "").endswith(("_file", "_dir"))
        if isinstance(value, str) and not value.strip() and optional_path:
            admits = _plain_types(cls.model_fields[info.field_name].annotation)
            if Path in admits and type(None) in admits:
                return None
        return value


def _holds_bool(value: Any) -> bool:
    """Whether a list (at any depth) holds a bool. Walked without recursion: a PUT of lists 400 deep
    (a few hundred bytes) made a RecursionError, a 500, an outside probe; the field's own check then
    refuses such nesting as a wrong shape."""
    stack = [value]
    while stack:
        for item in stack.pop():
            if isinstance(item, bool):
                return True
            if isinstance(item, list | tuple):
                stack.append(item)
    return False


def _leaf_types(annotation: Any) -> set[Any]:
    """Every type inside ``annotation`` (``list[tuple[int, ...]]`` -> {list, tuple, int, ...})."""
    args = get_args(annotation)
    return _plain_types(annotation).union(*(_leaf_types(a) for a in args if a is not Ellipsis))


#: the most pixels one frame may have (64 Mi: an EIGER2 X 16M has 18 M, a JUNGFRAU 10M 10 M); beyond it a
#: frame is a typo, refused at the start, not a simulator or daemon drawing or allocating for minutes
MAX_FRAME_PIXELS = 1 << 26


class DetectorSettings(_Section):
    """What the detector sends: frame shape and pixel type."""

    height: int = Field(1024, ge=1, le=16384, description="height x width at most 67,108,864 pixels")
    width: int = Field(1024, ge=1, le=16384)
    dtype: Literal["uint16", "uint32"] = "uint16"

    @model_validator(mode="after")
    def _frame_not_absurd(self) -> DetectorSettings:
        if self.height * self.width > MAX_FRAME_PIXELS:
            raise ValueError(
                f"a frame of {self.height} x {self.width} is {self.height * self.width:,} pixels, more than"
                f" {MAX_FRAME_PIXELS:,} (the largest detector this appliance takes)"
            )
        return self

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)


class GeometrySettings(_Section):
    """Experiment geometry in pyFAI's PONI convention (metres, radians)."""

    # bounded far beyond any beamline (so that no product is computed from infinities or noise):
    # distance 0.1 mm to 1 km, the PONI within 100 m of the corner, pixels 10 nm to 10 cm, wavelengths
    # 0.1 pm to 1 um, rotations within a turn (kernels/_geometry.py's LIMITS, LOWEST, ROTATION_LIMIT)
    dist: float = Field(0.1, ge=1e-4, le=1000.0)
    poni1: float = Field(
        0.0384,
        ge=-100.0,
        le=100.0,
        description="PONI along the slow axis (rows), metres from the first pixel's outer corner; the"
        " default is the centre of the default detector (1024 rows of 75 um): set it (or load a .poni)"
        " for any other detector, or the beam centre lies off the frames",
    )
    poni2: float = Field(
        0.0384,
        ge=-100.0,
        le=100.0,
        description="PONI along the fast axis (columns), metres from the first pixel's outer corner; the"
        " default is the centre of the default detector (1024 columns of 75 um), as for poni1",
    )
    rot1: float = Field(0.0, ge=-2 * math.pi, le=2 * math.pi)
    rot2: float = Field(0.0, ge=-2 * math.pi, le=2 * math.pi)
    rot3: float = Field(0.0, ge=-2 * math.pi, le=2 * math.pi)
    wavelength: float = Field(1.0e-10, ge=1e-13, le=1e-6)
    pixel1: float = Field(75e-6, ge=1e-8, le=0.1)
    pixel2: float = Field(75e-6, ge=1e-8, le=0.1)


class SimSettings(_Section):
    """The hardware simulator (``edge sim``), including the faults it injects."""

    endpoint: BindEndpoint = Field(
        f"tcp://{LOCALHOST}:5560",
        description="ZeroMQ endpoint the simulator binds (tcp://HOST:PORT, ipc://PATH)",
    )
    rate_hz: float = Field(20.0, gt=0, le=1_000_000)
    frames: int = Field(0, ge=0, description="0 = run until stopped")
    seed: int = Field(1234, ge=0)
    pool: int = Field(32, ge=1, le=4096, description="distinct noise realisations, reused cyclically")
    encoding: Literal["<", "bs16-lz4<"] = "<"
    series: int = Field(
        1,
        ge=0,
        description="the series number the simulator's one series carries on the wire (the detector's own"
        " count of its series, as a DECTRIS series_id), not how many series it sends: one per invocation",
    )
    mode: Literal["rings", "spots", "tomo"] = Field("rings", description="what the frames show")
    hit_fraction: float = Field(0.3, ge=0, le=1, description="spots: fraction of frames that are hits")
    tomo_angles: int = Field(
        180, ge=1, le=100_000, description="tomo: projections per scan, over tomo_range_deg"
    )
    tomo_darks: int = Field(10, ge=0, le=10_000, description="tomo: darks at the start of each scan")
    tomo_flats: int = Field(10, ge=0, le=10_000, description="tomo: flats after the darks")
    tomo_flats_end: int = Field(0, ge=0, le=10_000, description="tomo: flats after the projections")
    tomo_start_deg: float = Field(
        0.0, ge=-3600.0, le=3600.0, description="tomo: the first projection's angle"
    )
    tomo_range_deg: float = Field(
        180.0,
        ge=-3600.0,
        le=3600.0,
        description="tomo: the angles the projections step over (360: a full turn; negative: descending);"
        " projection k is at tomo_start_deg + k * tomo_range_deg / tomo_angles",
    )
    tomo_turns: int = Field(
        1,
        ge=1,
        le=1000,
        description="tomo: full turns of a continuous rotation (a fly scan; more than 1 needs"
        " tomo_range_deg +-360): the tomo_angles projections of a turn repeated, each turn's angles"
        " tomo_range_deg on from the one before",
    )
    tomo_axis_offset_px: float = Field(
        0.0,
        ge=-100_000.0,
        le=100_000.0,
        description="tomo: the rotation axis, in columns from the centre column (width // 2); `edge sim"
        " --json` gives it as tomo.rotation_axis_px",
    )

    @field_validator("tomo_range_deg")
    @classmethod
    def _some_range(cls, degrees: float) -> float:
        if degrees == 0:
            raise ValueError(
                "0 degrees: every projection at one angle; give the scan's range (e.g. 180, 360)"
            )
        return degrees

    @model_validator(mode="after")
    def _whole_turns(self) -> SimSettings:
        if self.tomo_turns > 1 and abs(self.tomo_range_deg) != 360.0:
            raise ValueError(
                f"tomo_turns = {self.tomo_turns} repeats full turns: tomo_range_deg must be 360 or -360,"
                f" got {self.tomo_range_deg}"
            )
        return self

    loss: float = Field(0.0, ge=0, le=1, description="probability a packet (udp) or frame (zmq) is dropped")
    reorder: float = Field(0.0, ge=0, le=1, description="probability a udp packet is delayed (reordered)")
    duplicate: float = Field(0.0, ge=0, le=1, description="probability a packet/frame is sent twice")
    corrupt: float = Field(0.0, ge=0, le=1, description="probability a packet/message is corrupted")
    stall_seconds: float = Field(
        0.0, ge=0, le=86_400.0, description="one pause of this length half-way through"
    )
    burst: int = Field(0, ge=0, description="send frames in bursts of this many at once (0 = evenly)")
    fault_seed: int = Field(99, ge=0)
    truncate: float = Field(0.0, ge=0, le=1, description="stream2: probability an image message is cut short")
    wrong_tag: float = Field(0.0, ge=0, le=1, description="stream2: probability of a wrong array tag")
    missing_end: bool = Field(False, description="stream2: never send the series' end message")
    stopped_state: Literal["Aborted", "Idle"] = Field(
        "Aborted",
        description="--ioc: the DetectorState_RBV a camera stopped mid-acquisition reports; drivers differ"
        " (some say Aborted, others, ADSimDetector for one, go straight to Idle)",
    )


class StreamSettings(_Section):
    """Where frames come from: the ZeroMQ frame stream (``zmq``) or UDP packets (``udp``)."""

    transport: Literal["zmq", "udp"] = "zmq"
    format: Literal["json", "stream2"] = Field(
        "json",
        description="message format of the zmq transport: json (DECTRIS stream v1 style) or stream2"
        " (DECTRIS Stream V2, CBOR; see docs/wire-formats.md)",
    )
    channel: str = Field("", description="stream2: the channel (threshold) stored and reduced; '' = first")
    stream2_check: Literal["sampled", "full"] = Field(
        "sampled",
        description="stream2: how each compressed image is checked before it is stored as received:"
        " sampled (every block's LZ4 sequences parsed, a few blocks decompressed) or full (every block"
        " decompressed); either way a stored image decodes",
    )
    endpoint: ConnectEndpoint = Field(
        f"tcp://{LOCALHOST}:5560",
        description="ZeroMQ endpoint of the detector's stream, connected to (tcp://HOST:PORT, ipc://PATH)",
    )
    rcvhwm: int = Field(
        2,
        ge=1,
        le=1_000_000,  # (ZeroMQ takes a C int; a million parts is far more than any ring holds)
        description="message parts ZeroMQ queues before the reader takes them",
    )
    rcvbuf_bytes: int = Field(
        4 << 20,
        ge=0,
        le=1 << 30,
        description="kernel receive buffer of the stream connection (0 = the OS's autotuning). Small"
        " buffers keep a backlog at the detector instead of in flight, so the live image stays fresh",
    )
    max_message_bytes: int = Field(
        0,
        ge=0,
        le=1 << 40,
        description="the largest message part the stream connection takes (ZeroMQ MAXMSGSIZE); a larger"
        " one is never buffered: ZeroMQ drops the connection and reconnects, counted as"
        " connections_dropped, and the frames in flight become a gap. 0 = 16 ring slots, at least 256 MiB"
        " (room for a Stream V2 start with masks and flat fields; a frame a little too large for a slot"
        " still arrives and is recorded frame_too_large); any other value at least 65536 (one series"
        " header)",
    )
    max_frame_jump: int = Field(
        1_000_000,
        ge=1,
        le=1 << 62,
        description="an image whose frame number is more than this beyond the newest accepted frame of"
        " its series (0 before the first) is rejected and counted (frame_number_out_of_range), never"
        " turned into a gap: one damaged or stray frame number cannot declare a million frames lost",
    )
    reorder_frames: int = Field(
        256,
        ge=0,
        le=1 << 20,
        description="a gap in a series' frame numbers is held until this many newer frames have come (or"
        " reorder_seconds have passed) before its frames are recorded lost, so that a frame overtaken by"
        " later ones (a sender with several threads or sockets) is stored when it comes (frames_reordered);"
        " one coming after is counted frames_late. 0 records a gap at once",
    )
    reorder_seconds: float = Field(
        0.5,
        ge=0.0,
        le=60.0,
        description="the longest a gap is held (see reorder_frames); the series' end records every held gap",
    )
    silent_alarm_seconds: float = Field(
        60.0,
        ge=1.0,
        le=86_400.0,
        description="a series open with no message from the detector for this long raises the minor alarm"
        " condition:stream_silent (a detector that stopped without ending its series leaves its run open"
        " until the next series starts); raise it for exposures longer than this",
    )

    @field_validator("max_message_bytes")
    @classmethod
    def _message_limit(cls, limit: int) -> int:
        if 0 < limit < 65536:
            raise ValueError(f"{limit} bytes: 0 (the default limit) or at least 65536 (one series header)")
        return limit


class UdpSettings(_Section):
    """The UDP packet format's detector layout and the receiver's policy (docs/wire-formats.md)."""

    host: str = Field(
        LOCALHOST,
        min_length=1,
        description="the address the UDP receiver binds (empty is refused: it meant every interface)",
    )
    port: int = Field(5580, ge=1, le=65535)
    module_rows: int = Field(256, ge=1, le=4096)
    module_cols: int = Field(256, ge=1, le=4096)
    grid_rows: int = Field(1, ge=1, le=32)
    grid_cols: int = Field(2, ge=1, le=32)
    gap_pixels: int = Field(2, ge=0, le=64)
    payload_bytes: int = Field(
        8192, ge=64, le=65000, description="a multiple of 2 (whole 16-bit pixels per packet)"
    )
    frames_per_run: int = Field(0, ge=0, description="frames the detector was armed for; 0 = unknown")
    idle_seconds: float = Field(1.0, gt=0, le=86_400.0, description="silence that ends a run")
    frame_timeout_frames: int = Field(
        4,
        ge=2,
        le=1024,
        description="a frame still missing packets is finished incomplete once a packet of a frame this many"
        " above it arrives (or at the run's end); later packets of it are late",
    )
    rcvbuf_bytes: int = Field(16 << 20, ge=65536, le=1 << 30)
    max_frame_jump: int = Field(
        1_000_000,
        ge=1,
        le=1 << 62,
        description="a packet whose frame number is more than this beyond the newest accepted frame of"
        " the run (0 before the first) is rejected and counted (frame_number_out_of_range), never"
        " turned into a gap. A real gap this large is a million frame periods without a packet, which"
        " at any rate below 1 MHz is longer than idle_seconds and has already ended the run",
    )

    @field_validator("payload_bytes")
    @classmethod
    def _whole_pixels(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"{value} is not a multiple of 2: a packet carries whole 16-bit pixels")
        return value

    @model_validator(mode="after")
    def _frame_not_absurd(self) -> UdpSettings:
        modules = self.grid_rows * self.grid_cols
        pixels = modules * self.module_rows * self.module_cols
        if pixels > MAX_FRAME_PIXELS:
            raise ValueError(
                f"a frame of {self.grid_rows} x {self.grid_cols} modules of {self.module_rows} x"
                f" {self.module_cols} pixels is {pixels:,} pixels, more than {MAX_FRAME_PIXELS:,}"
                " (the largest detector this appliance takes)"
            )
        return self


class RingSettings(_Section):
    """Shared-memory frame ring between the receiver and the pipeline."""

    slots: int = Field(
        64,
        ge=2,
        le=65536,
        description="frames the ring holds; its memory (slots x frame bytes) is reserved in /dev/shm at"
        " start: a ring larger than /dev/shm has free is refused",
    )
    policy: Literal["block", "count-and-drop"] = "block"
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
        description="the shared-memory name; default one of its own (edge-ring-...). At start, rings no"
        " process maps any more (left by a daemon that was killed) are removed: the default-named ones"
        " and this name",
    )


MODES = ("raw", "powder", "serial", "tomo")  # the reduction modes, one list everywhere (docs, PV, REST)


class SerialSettings(_Section):
    """Serial crystallography: the peak finder (peakfinder8-style) and the hit classifier."""

    min_snr: float = Field(
        5.0,
        gt=0,
        le=1000,
        description="a pixel is a candidate when its 3x3 box sum is this x its noise (ring sigma x 3) above"
        " the ring mean's (sharp background rings, ice rings, a beamstop's shadow, make false peaks at their"
        " edges: mask them, the beamstop a pixel or two beyond its edge, with reduction.mask_file,"
        " docs/kernels.md)",
    )
    adc_threshold: float = Field(0.0, ge=0, description="...and its box's mean above this raw value")
    min_pixels: int = Field(
        2,
        ge=1,
        le=10_000,
        description="smallest peak, in pixels; 2 or more also drops one pixel above background (hot pixel)",
    )
    max_pixels: int = Field(200, ge=1, le=100_000, description="largest peak, in pixels")
    min_peaks: int = Field(10, ge=0, le=100_000, description="a frame with at least this many peaks is a hit")
    clip_iterations: int = Field(
        2,
        ge=1,
        le=10,
        description="passes of each ring's sigma-clipped background (the first over every pixel): raise to"
        " 4-5 when bright or saturated reflections share rings with weak ones (after 2 passes such a ring's"
        " sigma can stay inflated and hide them); each pass past 2 costs about 2-3% of the finder's time",
    )
    max_peaks: int = Field(
        512,
        ge=1,
        le=100_000,
        description="peaks kept per frame in the peak table: with more found, the strongest (by intensity),"
        " in the finder's order (by each peak's first pixel, row-major); nPeaksFound counts them all",
    )

    @model_validator(mode="after")
    def _smallest_peak_not_above_largest(self) -> SerialSettings:
        # the finder cannot start with them: the run was reduced as raw, with no alarm (an outside probe)
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"reduction.serial.min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}: no"
                " peak could be found"
            )
        return self


class TomoSettings(_Section):
    """Tomography: which rows are reconstructed while projections arrive, and how."""

    slices: list[int] = Field(
        default_factory=list,
        max_length=128,
        description="detector rows to reconstruct, in the order given (a row given twice is reconstructed"
        " once, where it first comes); [] = centre row",
    )
    center: float | None = Field(
        None, ge=-100_000, le=100_000, description="rotation axis column; None = estimated"
    )
    filter: Literal["ramp", "shepp-logan", "cosine", "hamming", "hann"] = "ramp"
    angle_start: float | None = Field(
        None,
        ge=-100_000,
        le=100_000,
        description="degrees: the angle of a run's first projection that comes without one (an EPICS-driven"
        " scan: areaDetector frames carry none), as tomoScan's RotationStart; with angle_step, the n-th"
        " such projection of the run (from 0) is at angle_start + n x angle_step; None = none given",
    )
    angle_step: float | None = Field(
        None,
        ge=-360,
        le=360,
        description="degrees between consecutive projections that come without an angle (tomoScan's"
        " RotationStep); None = none given",
    )


class ReductionSettings(_Section):
    """Kernels, the reduction mode and its parameters."""

    mode: Literal["raw", "powder", "serial", "tomo"] = Field(
        "powder", description="raw (store only), powder (azimuthal integration), serial (peaks, hits), tomo"
    )
    backend: Literal["auto", "gpu", "numba", "numpy"] = "auto"
    cake_bins: int = Field(0, ge=0, le=3600, description="powder: azimuthal bins of a 2D cake; 0 = no cake")
    roi: list[tuple[int, int, int, int]] = Field(
        default_factory=list,
        max_length=64,
        description="ROI boxes (row0, row1, col0, col1), half-open; statistics in every mode but raw",
    )
    serial: SerialSettings = SerialSettings()
    tomo: TomoSettings = TomoSettings()
    bins: int = Field(1000, ge=2, le=100_000)
    unit: Literal["2th_deg", "2th_rad", "q_nm^-1", "q_A^-1"] = Field(
        "2th_deg",
        description="the radial axis, as pyFAI names it: 2theta in degrees or radians, q in 1/nm or"
        " 1/angstrom (pyFAI bins 2theta in radians and q in 1/nm whatever the unit, and so does the"
        " appliance: the unit scales the axis only)",
    )
    poni_file: Path | None = None
    dark_file: Path | None = Field(
        None,
        description=".npy dark image, subtracted from every frame; a pixel where it is not finite is left"
        " out as masked",
    )
    flat_file: Path | None = Field(None, description=".npy flat field; frames are divided by it")
    mask_file: Path | None = Field(None, description=".npy mask, nonzero = pixel excluded")
    solid_angle: bool = Field(False, description="normalise by each pixel's solid angle (as pyFAI)")
    polarization: float | None = Field(None, ge=-1, le=1, description="polarisation factor, as pyFAI")
    frame_threads: int = Field(
        1,
        ge=0,
        le=1024,
        description="numba threads on one frame in the pipeline (0 = every core); frames already overlap"
        " with compression and writing on their own threads, so 1 gives the most frames per second",
    )
    analysis_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="frames analysed at once in serial and powder mode (peak finding, integration), each"
        " on its own thread with frame_threads numba threads; products are still stored in frame order. 1:"
        " on the pipeline's one reducing thread. Raise it on a many-core server when the reducing thread"
        " is the bottleneck (CPU backends; the GPU is fed by one thread)",
    )


class LedgerSettings(_Section):
    """The ledger (SQLite, WAL): where it lives and the space kept so losses can always be recorded."""

    path: Path | None = Field(None, description="the ledger file; default STORE/ledger.sqlite")

    @field_validator("path")
    @classmethod
    def _a_file_name(cls, path: Path | None) -> Path | None:
        if path is not None and path.name in ("", ".", ".."):
            raise ValueError("must name the ledger file (e.g. /data/edge/ledger.sqlite), not a directory")
        return path

    reserve_bytes: int = Field(
        8 << 20,
        ge=0,
        le=1 << 34,
        description="preallocated beside the ledger (ledger.reserve) and given up when the disk is full, so"
        " the ledger can still record what the full disk lost; 0 = none: on a full disk the ledger's"
        " records (losses, acknowledgements) wait in memory until space returns (lost if the daemon dies"
        " meanwhile; with retention.headroom_bytes 0 too, the start warns)",
    )
    resume_free_bytes: int = Field(
        64 << 20,
        ge=0,
        description="after a full disk, writing resumes once this much is free again (at most a quarter of"
        " the store's disk: more could never come free; the start logs it)",
    )


class StoreSettings(_Section):
    """Local HDF5 store and its ledger (``ledger.sqlite`` inside ``path``)."""

    path: Path = Path("edge-data/store")

    @field_validator("path", mode="before")
    @classmethod
    def _some_path(cls, path: Any) -> Any:
        if isinstance(path, str) and not path.strip():  # Path("") is the working directory: never meant
            raise ValueError("empty: name the store's directory (e.g. /data/edge/store)")
        return path

    frames_per_file: int = Field(100, ge=1, le=1_000_000)
    file_seconds: float = Field(
        2.0,
        gt=0,
        le=86_400.0,
        description="a data file open this long is finished at the next pause in its frames (0.1 s without"
        " one: of the whole stream, or of the file's own, such as serial's hits among blanks); while its"
        " frames keep coming it is finished at store.frames_per_file",
    )
    reduced_file_seconds: float = Field(
        10.0,
        gt=0,
        le=86_400.0,
        description="a reduced file (frame table, products) is finished after this long or 1000 rows: at a"
        " crash, at most this long of vetoed frames have no record and become daemon_crash losses",
    )
    chunk_bytes: int = Field(4 << 20, ge=4096, le=MAX_CHUNK_BYTES)
    compress_threads: int = Field(
        2, ge=1, le=64, description="frames compressed at once (bitshuffle-LZ4, one OpenMP thread each)"
    )
    blanks: Literal["keep", "drop"] = Field(
        "keep",
        description="serial: blank frames go to their own local files (keep) or are vetoed (drop); an"
        " areaDetector capture's file (HDF1:Capture) takes every frame whatever this says, blanks too, as"
        " its client counts on",
    )
    roots: list[Path] = Field(
        default_factory=list,
        description="directories an areaDetector client may name in HDF1:FilePath (and below them); "
        "empty = the store path only",
    )

    def allowed_roots(self) -> list[Path]:
        """The directories ``HDF1:FilePath`` may name (``roots``, or the store path when it is empty)."""
        return [Path(p) for p in self.roots] or [self.path]


class RetentionSettings(_Section):
    """What may be deleted locally, and when: only ever files every required consumer verified."""

    unforwarded: Literal["keep", "purge_after_days"] = Field(
        "keep",
        description="files never forwarded (upstream.forward): kept, or purged after unforwarded_days. Kept"
        " files count against the quota: once they pass the high-water mark, every new run is refused",
    )
    unforwarded_days: float = Field(30.0, gt=0, le=36500)

    quota_bytes: int = Field(
        0,
        ge=0,
        description="bytes the store may hold; 0 = the disk's size (what can hold data, used and free as"
        " df counts them; more than the disk: the disk's size, logged at start)",
    )
    high_water: float = Field(
        0.90,
        gt=0,
        le=1,
        description="purge verified files when the store passes this fraction of (quota - headroom_bytes);"
        " also the fill of unverified data at which new runs are refused",
    )
    low_water: float = Field(
        0.75,
        gt=0,
        le=1,
        description="...until the fill is back below this fraction; a pass that runs out of verified files"
        " stops above it, and purging starts again when the fill next passes high_water (at most"
        " high_water; unset with high_water below it: high_water x 0.75 / 0.90)",
    )
    max_age_seconds: float = Field(
        0.0, ge=0, le=3.2e9, description="purge verified files older than this; 0 = never"
    )

    @model_validator(mode="before")
    @classmethod
    def _low_follows_high(cls, data: Any) -> Any:
        # only high_water given, below the default low_water: the low mark keeps its default's proportion
        # to the high one (0.75 of 0.90), as one would set it, rather than refusing the setting
        if isinstance(data, dict) and "low_water" not in data and "high_water" in data:
            try:  # (from the environment it is text; a value that is no number is refused after this)
                high = float(data["high_water"])
            except (TypeError, ValueError):
                return data
            if 0 < high < 0.75:
                data = {**data, "low_water": round(high * 0.75 / 0.90, 6)}
        return data

    @model_validator(mode="after")
    def _low_below_high(self) -> RetentionSettings:
        if self.low_water > self.high_water:
            raise ValueError(
                f"retention.low_water = {self.low_water} is above retention.high_water = {self.high_water}:"
                " purging starts at high_water and goes on down to low_water"
            )
        return self

    headroom_bytes: int = Field(
        64 << 20,
        ge=0,
        description="kept free so open files can always close: with the disk's free space down to it"
        " (measured before frames, every 10 ms at most; frames being written may take it a few MiB lower),"
        " writing waits for room; 0 = none kept,"
        " writing goes on until the disk refuses it (disk_full losses); at most a quarter of the quota"
        " (or of the disk) is kept, whatever is set (the start logs it). A reduced file, written whole"
        " when it is finished, is finished early once its products reach a quarter of this (at least"
        " 1 MiB, at most 256 MiB), so its close fits in what is kept free",
    )
    interval_seconds: float = Field(1.0, gt=0, le=86_400.0)


class UpstreamSettings(_Section):
    """The appliance's side of the upstream pull protocol."""

    endpoint: BindEndpoint = Field(
        f"tcp://{LOCALHOST}:5570",
        description="ZeroMQ endpoint the upstream server binds (tcp://HOST:PORT; * any address, port 0 any"
        " free port)",
    )
    forward: Literal["all", "reduced", "hits"] = Field(
        "all",
        description="what goes upstream: all (raw frames and products), reduced (products and the frame"
        " table only), hits (serial: raw frames of hits and the products)",
    )
    required_consumers: list[str] = Field(default_factory=lambda: ["hpc"], min_length=1)
    resend_seconds: float = Field(10.0, gt=0, le=86_400.0)
    corrupt: float = Field(
        0.0,
        ge=0,
        le=1,
        description="fault injection: probability a sent chunk has one byte flipped in transit",
    )
    curve_secret_file: Path | None = Field(None, description="appliance's CurveZMQ key pair (edge keys)")
    curve_clients_dir: Path | None = Field(
        None,
        description=(
            "public keys of the consumers allowed in, each as CONSUMER.key (it admits that name only);"
            " reread when it changes"
        ),
    )

    @field_validator("required_consumers")
    @classmethod
    def _consumer_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not CONSUMER_NAME.fullmatch(name):
                raise ValueError(f"consumer name {name!r}: 1 to 64 of A-Z a-z 0-9 _ . -")
        if len(set(names)) != len(names):
            raise ValueError(f"a consumer is named twice in {names}: every file would wait for it forever")
        return names


class PullSettings(_Section):
    """The HPC-side client (``edge pull``)."""

    endpoint: ConnectEndpoint = Field(
        f"tcp://{LOCALHOST}:5570",
        description="ZeroMQ endpoint of the appliance's upstream server (tcp://HOST:PORT)",
    )
    consumer: str = Field("hpc", pattern=f"^{CONSUMER_NAME.pattern}$")  # the appliance's rule, once
    output: Path = Path("edge-data/upstream")
    credit: int = Field(8, ge=1, le=1024)
    part_expiry_seconds: float = Field(
        86_400.0,
        ge=0,
        le=365 * 86_400.0,
        description="a partial file (NAME.part) no chunk reached for this long is removed: the appliance no"
        " longer offers it (an optional consumer that fell behind); 0 = never",
    )
    curve_secret_file: Path | None = Field(None, description="this consumer's CurveZMQ key pair")
    curve_server_file: Path | None = Field(None, description="the appliance's public key")


class ApiSettings(_Section):
    """REST/WebSocket API and dashboard."""

    host: str = Field(
        LOCALHOST,
        min_length=1,
        description="the address the API listens on (0.0.0.0: every interface, logged as a warning; an"
        " empty host is refused: it meant every interface without saying so)",
    )
    port: int = Field(8080, ge=0, le=65535, description="0: a free port the system chooses, logged at start")
    token: str | None = Field(
        None,
        description='the bearer token API writes need (`Authorization: Bearer TOKEN`); null or "": writes'
        " answer 403. Printable ASCII, no spaces around it (a header cannot carry others alike)",
    )

    @field_validator("token")
    @classmethod
    def _token_usable(cls, value: str | None) -> str | None:
        """A token a client can send: spaces around one are ignored as it is sent, so a token with them
        (or of spaces only) could never match."""
        if value and value != value.strip():
            raise ValueError(
                "has spaces before or after it (or is only spaces), which a client's header cannot carry:"
                ' leave them out (or unset it, or "", to disable writes)'
            )
        if value and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("holds a control character (a newline, say), which no HTTP header can carry")
        if value and not value.isascii():
            # HTTP headers are bytes: curl sends UTF-8, others Latin-1, and the server reads them as
            # Latin-1, so only one of them matched (an outside probe: "sécret")
            odd = next(c for c in value if not c.isascii())
            raise ValueError(
                f"holds {odd!r}, not ASCII: clients send a header's other characters in different"
                " encodings, so it would match for some and not others; use ASCII (e.g. from"
                " `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            )
        return value

    max_connections: int = Field(
        512,
        ge=8,
        le=100_000,
        description="API connections open at once; one more is closed as it opens (a client holding many"
        " open must not use up the daemon's file descriptors, which the detector's stream needs too); live"
        " event streams take at most three quarters of them (all but 4 at least), one more answered 503",
    )
    header_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="an API connection whose request headers are not complete this long after they began"
        " (or after it opened) is closed; a request being answered, a live stream included, never is",
    )


class EpicsSettings(_Section):
    """The appliance's own PVs (softioc) and the detector it drives (pyepics)."""

    enabled: bool = False
    prefix: str = Field("EDGE:", min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_:.-]+$")
    detector_prefix: str = Field("SIM:cam1:", min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_:.-]+$")
    acf_file: Path | None = Field(
        None, description="access security file (ACF); None = the packaged edge/data/edge.acf"
    )
    pva_image: bool = Field(
        True, description="serve the newest frame as an NTNDArray over pvAccess (PREFIX + Pva1:Image, p4p)"
    )
    pva_rate_hz: float = Field(5.0, gt=0, le=50, description="most updates per second of Pva1:Image")
    run_grace_seconds: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="an Acquire put gives its run up (and completes) when, the camera done, no frame has"
        " moved in the appliance (received, reduced, written; no mode's kernels loading) this long",
    )


class LogSettings(_Section):
    """What the processes log and how: plain text for a terminal, JSON lines for journald/ELK.

    Both change without a restart: ``systemctl reload edge`` (SIGHUP) applies them.
    """

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


#: the largest config file read (a config is a few KiB; a larger file is a mistake, not settings)
MAX_CONFIG_BYTES = 64 * 2**20

_toml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edge_toml_path", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _toml_path.get()
        if path is None:
            return {}
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError as error:
            raise ConfigError(f"config file {path} does not exist") from error
        except IsADirectoryError as error:
            raise ConfigError(f"config file {path} is a directory, not a TOML file") from error
        except OSError as error:
            raise ConfigError(f"config file {path} cannot be read: {error.strerror or error}") from error
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {path} is over {MAX_CONFIG_BYTES // 2**20} MiB: not a config file"
            )
        try:
            text = raw.decode("utf-8-sig")  # an editor's byte order mark is no TOML error
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte {error.start}): not a TOML file"
            ) from error
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from error
        except RecursionError as error:  # arrays nested thousands deep: no setting of ours is
            raise ConfigError(f"config file {path} nests arrays or tables too deep") from error


class SupervisionSettings(_Section):
    """How the data-plane threads are supervised (edge.supervision)."""

    max_restarts: int = Field(3, ge=0, le=1000)  # then the daemon exits non-zero for its service manager
    restart_backoff_seconds: float = Field(0.5, ge=0.0, le=60.0)
    # testing only: "NAME:N" raises an error in thread NAME (reader, pipeline, pipeline-writer, forwarder,
    # retention) at its Nth loop, "NAME:N:hang" wedges it there until the daemon stops; empty: never
    inject_error: str = Field("", pattern=r"^([a-z-]+(:[0-9]{1,9}(:hang)?)?)?$")


class Settings(BaseSettings):
    """Everything the appliance, simulator and pull client need, in one typed object."""

    model_config = SettingsConfigDict(
        env_prefix="EDGE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    detector: DetectorSettings = DetectorSettings()
    geometry: GeometrySettings = GeometrySettings()
    sim: SimSettings = SimSettings()
    stream: StreamSettings = StreamSettings()
    udp: UdpSettings = UdpSettings()
    ring: RingSettings = RingSettings()
    reduction: ReductionSettings = ReductionSettings()
    store: StoreSettings = StoreSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    retention: RetentionSettings = RetentionSettings()
    pull: PullSettings = PullSettings()
    api: ApiSettings = ApiSettings()
    epics: EpicsSettings = EpicsSettings()
    supervision: SupervisionSettings = SupervisionSettings()
    ledger: LedgerSettings = LedgerSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @property
    def ledger_path(self) -> Path:
        return self.ledger.path or self.store.path / "ledger.sqlite"

    @model_validator(mode="after")
    def _api_and_upstream_apart(self) -> Settings:
        # the same TCP port for both: the API took it, the upstream server could not (a traceback after
        # "ready" once)
        scheme, _sep, rest = self.upstream.endpoint.partition("://")
        host, _colon, port = rest.rpartition(":")
        if scheme == "tcp" and port.isdigit() and int(port) and int(port) == self.api.port:
            raise ValueError(
                f"api.port and upstream.endpoint both use port {self.api.port} ({self.api.host} and"
                f" {host}): give each its own"
            )
        return self

    @model_validator(mode="after")
    def _ledger_is_no_directory(self) -> Settings:
        # sqlite's own error ("unable to open database file") came as a traceback, after the lock file
        # and the reserve were made beside it
        if self.ledger_path.is_dir():
            which = "ledger.path" if self.ledger.path is not None else "store.path (its ledger.sqlite)"
            raise ValueError(f"{which}: {self.ledger_path} is a directory; the ledger is a file")
        return self


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. ring.slots=128)")
    try:
        value: Any = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    except RecursionError as error:  # arrays nested thousands deep: no setting of ours is
        raise ConfigError(f"override {key.strip()}: its value nests arrays or tables too deep") from error
    return key.strip().split("."), value


def _nest(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in overrides:
        path, value = _parse_override(item)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets inside a value")
        node[path[-1]] = value
    return tree


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """Every bad value of a validation error as ``key = value: why``, keys under ``prefix``."""
    lines = []
    for item in error.errors():
        loc = list(item["loc"])
        if item["type"] == "missing" and loc and isinstance(loc[-1], int):
            # an item missing from a list of fixed length (a box of 3 numbers for 4): name the list
            index = loc.pop()
            key = _key(prefix, loc)
            lines.append(f"{key} = {_shown(item.get('input'))}: too few values (nothing at index {index})")
            continue
        key = _key(prefix, loc)
        if item["type"] == "value_error" and isinstance(item.get("input"), dict) and key:
            # a check across a section's keys: its message names them; the section's whole table is noise
            said = str(item["msg"]).removeprefix("Value error, ")
            # (one naming its keys in full is a setting's line, its source added: `_with_sources`)
            lines.append(said if said.startswith(f"{key}.") else f"{key}: {said}")
            continue
        if item["type"] == "extra_forbidden":  # a key no section has: name it as typed (`a.b.c`), in full
            lines += [
                f"{name} = {_shown(value)}: no such setting{_did_you_mean(name)}"
                " (docs/settings.md lists them)"
                for name, value in _dotted(key, item.get("input"))
            ]
            continue
        if not key:  # a check across sections: its message names the settings
            lines.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        lines.append(f"{key} = {_shown(item.get('input'))}: {str(item['msg']).removeprefix('Value error, ')}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _setting_names(kind: Any = None, prefix: str = "") -> list[str]:
    """Every setting's dotted name (``sim.rate_hz``), tables' keys included."""
    names = []
    for name, field in getattr(kind or Settings, "model_fields", {}).items():
        dotted = f"{prefix}{name}"
        names.append(dotted)
        if hasattr(field.annotation, "model_fields"):
            names += _setting_names(field.annotation, dotted + ".")
    return names


def _did_you_mean(name: str) -> str:
    """``; did you mean X?`` for the setting spelled most like ``name`` (``sim.rate`` -> sim.rate_hz)."""
    # a setting of the same section, by its own name ("reduction.serial.foo" was "did you mean
    # reduction.serial?", the section it sits in: an outside probe); a name of an unknown section, whole
    names = _setting_names()
    parent, _, leaf = name.rpartition(".")
    siblings = {n.rpartition(".")[2]: n for n in names if n.rpartition(".")[0] == parent}
    if siblings:
        close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
        return f"; did you mean {siblings[close[0]]}?" if close else ""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def _key(prefix: str, loc: list[Any]) -> str:
    """A setting's name from a validation error's location: ``reduction.roi[0]``, list items indexed."""
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else ("." if key else "") + str(part)
    return key


def _dotted(key: str, value: Any) -> list[tuple[str, Any]]:
    """The dotted names (and values) an unknown key stands for (``nosuch`` with ``{"key": 1}``:
    ``nosuch.key`` = 1)."""
    if not isinstance(value, dict) or not value:
        return [(key, value)]
    return [pair for sub, inner in value.items() for pair in _dotted(f"{key}.{sub}", inner)]


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


ENV_PREFIX = "EDGE_"


def _check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``EDGE_`` variables that look like settings and name none (pydantic-settings passes them
    over without a word): a section that does not exist (``EDGE_FOO__BAR``), or a setting spelled with
    one underscore between section and key (``EDGE_RING_SLOTS`` for ``EDGE_RING__SLOTS``). Other
    ``EDGE_`` names (a test's ``EDGE_TEST_GPU``) are no settings and stay allowed."""
    sections = {name: field.annotation for name, field in Settings.model_fields.items()}
    problems = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if "__" in rest:
            parts = rest.split("__")
            if parts[0] not in sections:
                problems.append(
                    f"{name}: no such setting (no section {parts[0]!r}; docs/settings.md lists them)"
                )
                continue
            # every level below the section names a key of its table, and a value has no keys (an
            # outside probe: EDGE_RING__SLOTS__X=1 was ring.slots = {'x': '1'}, "a valid integer")
            kind: Any = Settings
            for depth, part in enumerate(parts):
                fields = getattr(kind, "model_fields", None)
                where = ".".join(parts[:depth])
                if fields is None:
                    problems.append(f"{name}: no such setting ({where} is a value, not a table)")
                    break
                if part not in fields:
                    problems.append(f"{name}: no such setting ([{where}] has no {part!r}; docs/settings.md)")
                    break
                kind = fields[part].annotation
            continue
        for section, kind in sections.items():
            key = rest.removeprefix(f"{section}_")
            fields = getattr(kind, "model_fields", {})
            if key != rest and key in fields:
                problems.append(
                    f"{name}: no such setting; {ENV_PREFIX}{section.upper()}__{key.upper()} sets"
                    f" {section}.{key} (two underscores between the section and the key)"
                )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _with_sources(message: str, config: Path | None, overrides: list[str]) -> str:
    """``message``'s lines naming a setting (``section.key = ...``) with where its value came from: a
    ``--set``, an ``EDGE_SECTION__KEY`` variable or the settings file (an outside probe: a bad value from
    the environment was named as if typed)."""
    given = [item.partition("=")[0].strip() for item in overrides]

    def source(match: re.Match[str]) -> str:
        key = match.group(1)
        parts = key.split(".")
        prefixes = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]  # the key, then its tables
        variables = [ENV_PREFIX + prefix.replace(".", "__").upper() for prefix in prefixes]
        # the environment's names as given (their case is free: EDGE_ring__slots sets ring.slots too)
        named = {name.upper(): name for name in sorted(os.environ, reverse=True)}
        if (typed := next((prefix for prefix in prefixes if prefix in given), None)) is not None:
            where = f"--set {typed}"
        elif (variable := next((named[v] for v in variables if v in named), None)) is not None:
            where = f"the environment's {variable}"
        elif config is not None:
            where = str(config)
        else:
            return match.group(0)
        return f"{match.group(0)} (from {where})"

    return re.sub(r"(?m)^  ([a-z0-9_]+(?:\.[a-z0-9_]+)+)\b.*$", source, message)


def load_settings(config: Path | None = None, overrides: list[str] | None = None) -> Settings:
    """Parse settings from a TOML file, the environment and ``KEY=VALUE`` overrides (in that precedence)."""
    _check_environment(os.environ)
    token = _toml_path.set(config)
    try:
        return Settings(**_nest(overrides or []))
    except ValidationError as error:
        raise ConfigError(_with_sources(describe_validation_error(error), config, overrides or [])) from None
    except SettingsError as error:  # an environment value pydantic-settings cannot parse (not JSON)
        field = re.search(r'field "([^"]+)"', str(error))
        prefix = ENV_PREFIX + (field.group(1).upper() if field else "")
        names = sorted(k for k in os.environ if k.upper().startswith(prefix)) or [f"an {ENV_PREFIX} variable"]
        cause = f": {error.__cause__}" if error.__cause__ is not None else ""
        raise ConfigError(
            f"invalid configuration:\n  the environment's {', '.join(names)} cannot be read{cause}; a list or"
            f" a table is written there as JSON, e.g. {ENV_PREFIX}UPSTREAM__REQUIRED_CONSUMERS='[\"hpc\"]'"
        ) from None
    finally:
        _toml_path.reset(token)
