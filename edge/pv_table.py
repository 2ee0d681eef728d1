"""The appliance IOC's PV table: every record it serves, in documentation order, and what each accepts.

`PVS` is the single source of the records (`edge.ioc.ApplianceIOC` builds them), of the rules a put must
meet (`edge.pv_input`: choices, lengths, ``limits``) and of ``docs/pvs.md`` (`edge.pvdocs`). A PV added
here inherits all three. Nothing here imports softioc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge import __version__, pv_input
from edge.config import MODES, ReductionSettings, SerialSettings, TomoSettings
from firmware_bridge.areadetector import (
    CLOSE_OPEN,
    CLOSED_OPEN,
    DISABLE_ENABLE,
    FRAME_TYPES,
    SHUTTER_MODES,
    TRIGGER_MODES,
)
from firmware_bridge.areadetector import DETECTOR_STATES as AD_DETECTOR_STATES

__all__ = [
    "ALARM_FIELDS",
    "AUTOSAVED",
    "DETECTOR_STATES",
    "ENUM_SEVERITIES",
    "LONG_STRING",
    "MODES",
    "PVS",
    "TEMP_SUFFIX",
    "UPSTREAM_STATES",
    "PvSpec",
]

#: areaDetector's own list, exactly (ophyd-async's ADState is a strict enum): a state not known yet reads
#: Initializing, one outside the list Error
DETECTOR_STATES: tuple[str, ...] = tuple(AD_DETECTOR_STATES)
_STATE_SEVERITY = {"Error": "MAJOR", "Disconnected": "MAJOR", "Aborted": "MINOR"}
UPSTREAM_STATES: tuple[str, ...] = ("No consumer", "Connected", "Backlog")
LONG_STRING = 256
MAX_IMAGES = 10_000_000
MAX_PERIOD_S = 3600.0


@dataclass(frozen=True)
class PvSpec:
    """One record: its name after the prefix, softioc builder kind, CA type as documented, and meaning.

    ``length`` is the element count of waveforms and long strings; ``"bins"`` and ``"preview"`` are
    filled in from the settings when the record is built. ``limits`` is the inclusive range a writable
    number must be in (`edge.pv_input` refuses anything else, as ``docs/pvs.md`` says per PV);
    ``nan_means`` says what a NaN put means where one is allowed. ``param`` names the reduction
    parameter a ``Reduction:`` setpoint changes for the next run (dotted, as in the settings).
    """

    name: str
    kind: str
    ca_type: str
    doc: str
    choices: tuple[str, ...] = ()
    units: str = ""
    length: int | str = 0
    fields: dict[str, Any] = field(default_factory=dict, compare=False)
    limits: tuple[float, float] | None = None
    nan_means: str = ""
    param: str = ""
    #: value the record starts with (areaDetector writer PVs without another source of truth)
    initial: Any = None
    #: the one value the appliance has (an enum index or a number): any other put is refused (MINOR SOFT)
    #: with ``only_why``; ``"width"``, ``"height"`` or ``"data_type"``: the frame's own, known at start
    only: Any = None
    only_why: str = ""
    #: what else the appliance's state refuses, for the "bad put" column
    also_refused: str = ""

    @property
    def writable(self) -> bool:
        return self.kind.endswith("Out")


def _rbv(name: str, kind: str, ca_type: str, doc: str, **kw: Any) -> PvSpec:
    return PvSpec(name, kind, ca_type, doc, **kw)


def _param(name: str, kind: str, ca_type: str, doc: str, param: str, **kw: Any) -> tuple[PvSpec, PvSpec]:
    """A per-run reduction parameter: setpoint (for the next run) and readback (as accepted)."""
    rbv_kind = kind.replace("Out", "In")
    if kw.get("nan_means"):  # NaN is a value here, not "undefined" (no INVALID UDF alarm)
        kw["fields"] = {"UDFS": "NO_ALARM"}
    rbv_kw = {k: v for k, v in kw.items() if k in ("units", "length", "fields")}
    return (
        PvSpec(name, kind, ca_type, f"{doc} For the next run (`reduction.{param}`).", param=param, **kw),
        PvSpec(f"{name}_RBV", rbv_kind, ca_type, f"`{name}`, as accepted.", **rbv_kw),
    )


def _stored(
    name: str, kind: str, ca_type: str, doc: str, initial: Any, rbv_doc: str | None = None, **kw: Any
) -> tuple[PvSpec, PvSpec]:
    """An areaDetector writer setting the appliance keeps and shows back (``X`` and ``X_RBV``)."""
    rbv_kw = {k: v for k, v in kw.items() if k in ("units", "length", "fields", "choices")}
    shown = rbv_doc or f"`{name}`, as accepted."
    return (
        PvSpec(name, kind, ca_type, doc, initial=initial, **kw),
        PvSpec(f"{name}_RBV", kind.replace("Out", "In"), ca_type, shown, **rbv_kw),
    )


def _pool_pvs(prefix: str) -> tuple[PvSpec, ...]:
    """asyn's NDArray pool records (ophyd declares them on drivers and plugins): the appliance keeps
    frames in its ring instead, whose use ``QueueFree``/``QueueFill_RBV`` show."""
    doc = "NDArray pool: 0 (the appliance has a frame ring)."
    return (
        _rbv(f"{prefix}PoolAllocBuffers", "longIn", "long", doc),
        _rbv(f"{prefix}PoolFreeBuffers", "longIn", "long", doc),
        _rbv(f"{prefix}PoolMaxBuffers", "longIn", "long", doc),
        _rbv(f"{prefix}PoolMaxMem", "aIn", "double", doc, units="MB"),
        _rbv(f"{prefix}PoolUsedBuffers", "aIn", "double", doc),
        _rbv(f"{prefix}PoolUsedMem", "aIn", "double", doc, units="MB"),
    )


_NO_YES = ("No", "Yes")
_VERSION = f"edge {__version__}"
_OFF_ON = ("Off", "On")
AD_DATA_TYPES = (
    "Int8",
    "UInt8",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Float32",
    "Float64",
)
AD_COLOR_MODES = ("Mono", "Bayer", "RGB1", "RGB2", "RGB3", "YUV444", "YUV422", "YUV421")


def _pixel_format(prefix: str) -> tuple[PvSpec, PvSpec]:
    """``DataType`` and ``ColorMode`` of a driver (``""``) or a plugin (``"HDF1:"``): the detector's pixel
    type and Mono, each the only value taken."""
    return (
        PvSpec(
            f"{prefix}DataType",
            "mbbOut",
            "enum",
            "Pixel type: the detector's only (`DataType_RBV`).",
            choices=AD_DATA_TYPES,
            only="data_type",
            only_why="frames are stored in the detector's pixel type",
        ),
        PvSpec(
            f"{prefix}ColorMode",
            "mbbOut",
            "enum",
            "Mono only (`ColorMode_RBV`).",
            choices=AD_COLOR_MODES,
            initial=0,
            only=0,
            only_why="X-ray frames are monochrome",
        ),
    )


AD_COMPRESSIONS = ("None", "N-bit", "szip", "zlib", "Blosc", "BSLZ4", "LZ4", "JPEG")
FILE_WRITE_MODES = ("Single", "Capture", "Stream")
_NOOP = " Accepted and shown back; no effect on the appliance (see docs/bluesky.md)."

#: NDPluginBase / NDArrayBase / NDFileHDF5 records of ``HDF1:`` beyond the ones with their own meaning
#: above: what stock ophyd-async (``adcore.NDFileHDF5IO``) and ophyd (``HDF5Plugin.stage``) connect.
HDF_PLUGIN_PVS: tuple[PvSpec, ...] = (
    _rbv("HDF1:PortName_RBV", "stringIn", "string", "asyn port name of the writer.", initial="EDGE_HDF1"),
    _rbv("HDF1:PluginType_RBV", "stringIn", "string", "Plugin type (as ADCore's).", initial="NDFileHDF5"),
    _rbv(
        "HDF1:ADCoreVersion_RBV",
        "stringIn",
        "string",
        "ADCore version whose PVs this follows.",
        initial="3.12.1",
    ),
    _rbv("HDF1:DriverVersion_RBV", "stringIn", "string", "The appliance's version.", initial=_VERSION),
    _rbv("HDF1:UniqueId_RBV", "longIn", "long", "Frame number of the newest frame received."),
    _rbv("HDF1:ArraySizeX_RBV", "longIn", "long", "Frame width (pixels)."),
    _rbv("HDF1:ArraySizeY_RBV", "longIn", "long", "Frame height (pixels)."),
    _rbv("HDF1:ArraySizeZ_RBV", "longIn", "long", "0 (monochrome frames)."),
    _rbv("HDF1:ArraySize0_RBV", "longIn", "long", "Frame width (pixels)."),
    _rbv("HDF1:ArraySize1_RBV", "longIn", "long", "Frame height (pixels)."),
    _rbv("HDF1:ArraySize2_RBV", "longIn", "long", "0 (monochrome frames)."),
    _rbv("HDF1:ArraySize0", "longIn", "long", "Frame width, as NDFile names it."),
    _rbv("HDF1:ArraySize1", "longIn", "long", "Frame height, as NDFile names it."),
    _rbv("HDF1:DataType_RBV", "mbbIn", "enum", "Pixel type of the stored frames.", choices=AD_DATA_TYPES),
    _rbv("HDF1:ColorMode_RBV", "mbbIn", "enum", "Mono.", choices=AD_COLOR_MODES),
    *_stored(
        "HDF1:ArrayCounter",
        "longOut",
        "long",
        "Write to set the writer's frame counter (e.g. 0 to reset it); no other effect on the appliance.",
        0,
        rbv_doc="Frames the writer took since start, counted on from the last value written to "
        "`HDF1:ArrayCounter` (a long: past 2147483647 it wraps to negative, as areaDetector's counters).",
        limits=(0, 2**31 - 1),
    ),
    PvSpec(
        "HDF1:NDAttributesFile",
        "longStringOut",
        "char[256]",
        "NDAttributes XML." + _NOOP,
        length=LONG_STRING,
        initial="",
    ),
    *_stored("HDF1:NDArrayPort", "stringOut", "string", "Upstream asyn port." + _NOOP, "EDGE"),
    *_stored("HDF1:NDArrayAddress", "longOut", "long", "Upstream asyn address." + _NOOP, 0, limits=(0, 1024)),
    *_stored(
        "HDF1:EnableCallbacks",
        "boolOut",
        "enum",
        "Plugin callbacks." + _NOOP + " The appliance stores every frame it receives.",
        1,
        choices=("Disable", "Enable"),
    ),
    *_stored("HDF1:BlockingCallbacks", "boolOut", "enum", "Blocking callbacks." + _NOOP, 0, choices=_NO_YES),
    *_stored(
        "HDF1:QueueSize",
        "longOut",
        "long",
        "Plugin queue size." + _NOOP + " The frame ring's size is `QueueSize_RBV`.",
        100,
        limits=(1, 1_000_000),
    ),
    *_stored(
        "HDF1:FileTemplate",
        "longStringOut",
        "char[256]",
        "C format of the capture's file name from "
        "`FilePath`, `FileName` and `FileNumber` (e.g. `%s%s.h5`, `%s%s_%3.3d.h5`).",
        "%s%s.h5",
        length=LONG_STRING,
        also_refused="a template that does not take `%s` (path), `%s` (name) and optionally an integer"
        " field, or with a field width or precision above 255: MINOR SOFT, `WriteMessage` says why",
    ),
    *_stored(
        "HDF1:FileNumber",
        "longOut",
        "long",
        "Number for `FileTemplate`'s `%d`; +1 as soon as a capture names its file while `AutoIncrement` is"
        " Yes, as areaDetector raises it once the file is open (at 2147483647 it stays, and `WriteMessage`"
        " says so).",
        0,
        limits=(0, 2**31 - 1),
    ),
    *_stored(
        "HDF1:AutoIncrement",
        "boolOut",
        "enum",
        "Increment `FileNumber` when a capture opens its file.",
        0,
        choices=_NO_YES,
    ),
    *_stored(
        "HDF1:FileWriteMode",
        "mbbOut",
        "enum",
        "Stream: `Capture` 1 opens one file that takes "
        "every frame until `Capture` 0 (or `NumCapture` frames). Single and Capture are taken as "
        "Stream (frames are written as they come either way).",
        2,
        choices=FILE_WRITE_MODES,
    ),
    PvSpec(
        "HDF1:CreateDirectory",
        "longOut",
        "long",
        "As areaDetector's: non-zero makes a missing `FilePath` (inside `store.roots`) when `FilePath` is "
        "put (and at `Capture` 1); negative N: at most N directories at the end of the path are made; "
        "positive N: the path's first N directories from the root must exist already. 0 makes none. A "
        "path it may not make leaves `FilePathExists_RBV` No, `WriteMessage` saying why.",
        limits=(-100, 100),
        initial=0,
    ),
    _rbv("HDF1:CreateDirectory_RBV", "longIn", "long", "`CreateDirectory`, as accepted."),
    _rbv(
        "HDF1:FilePathExists_RBV",
        "boolIn",
        "enum",
        "Whether the `FilePath` last given is a writable "
        "directory inside `store.roots` (No for a refused path; `WriteMessage` then says why: outside "
        "the roots, not created, does not exist, not writable).",
        choices=_NO_YES,
    ),
    *_stored(
        "HDF1:Compression",
        "mbbOut",
        "enum",
        "Frames are always stored bitshuffle-LZ4 (BSLZ4); other values are refused.",
        5,
        choices=AD_COMPRESSIONS,
        only=5,
        only_why="frames are always stored bitshuffle-LZ4 (BSLZ4)",
    ),
    *_stored("HDF1:PositionMode", "boolOut", "enum", "Position mode." + _NOOP, 0, choices=_OFF_ON),
    *_stored("HDF1:NumExtraDims", "longOut", "long", "Extra dimensions." + _NOOP, 0, limits=(0, 9)),
    *_stored(
        "HDF1:SWMRMode",
        "boolOut",
        "enum",
        "SWMR." + _NOOP + " The file appears under its name, complete, when the capture ends.",
        0,
        choices=_OFF_ON,
    ),
    PvSpec("HDF1:FlushNow", "boolOut", "enum", "Flush." + _NOOP, choices=("Done", "Flush"), initial=0),
    *_stored(
        "HDF1:XMLFileName",
        "longStringOut",
        "char[256]",
        "Layout XML." + _NOOP + " Frames are at `/entry/data/data` (NXmx).",
        "",
        length=LONG_STRING,
    ),
    *_stored(
        "HDF1:NumFramesChunks",
        "longOut",
        "long",
        "Frames per chunk. Accepted and kept; no effect: one chunk is one frame, as the readback reads.",
        1,
        "The real frames per chunk: 1, whatever was put (as NDFileHDF5 shows the chunking it uses).",
        limits=(0, 1_000_000),
    ),
    *_stored("HDF1:ChunkSizeAuto", "boolOut", "enum", "Automatic chunking." + _NOOP, 1, choices=_NO_YES),
    *_stored(
        "HDF1:LazyOpen",
        "boolOut",
        "enum",
        "Lazy open: the file opens with the capture's first frame (always so here).",
        1,
        choices=_NO_YES,
    ),
)

_DRIVER_NOOP = " Accepted and shown back; the appliance runs `NumImages` frames at `AcquirePeriod`."

#: What ophyd-async's ``adcore.ADBaseIO`` connects on a driver, beyond the run-control records above, so
#: that the appliance's own prefix works as an areaDetector driver (``ADBaseIO("EDGE:")``).
DRIVER_PVS: tuple[PvSpec, ...] = (
    *_stored(
        "AcquireTime",
        "aOut",
        "double",
        "Exposure per frame, given to the detector at the next `Acquire` (0: the whole `AcquirePeriod`);"
        " the series header reports it (`count_time`) and the data files carry it.",
        0.0,
        units="s",
        limits=(0.0, MAX_PERIOD_S),
        fields={"PREC": 6},
    ),
    *_stored(
        "ImageMode",
        "mbbOut",
        "enum",
        "Single, Multiple or Continuous." + _DRIVER_NOOP,
        1,
        choices=("Single", "Multiple", "Continuous"),
    ),
    PvSpec(
        "WaitForPlugins",
        "boolOut",
        "enum",
        "Wait for plugins: the appliance's own `Acquire` completes only when every frame is stored, always.",
        choices=_NO_YES,
        initial=0,
    ),
    PvSpec(
        "NDAttributesFile",
        "longStringOut",
        "char[256]",
        "NDAttributes XML." + _NOOP,
        length=LONG_STRING,
        initial="",
    ),
    _rbv("PortName_RBV", "stringIn", "string", "asyn port name.", initial="EDGE"),
    _rbv("Manufacturer_RBV", "stringIn", "string", "Manufacturer.", initial="edge"),
    _rbv("Model_RBV", "stringIn", "string", "Model.", initial="edge appliance"),
    _rbv("SerialNumber_RBV", "stringIn", "string", "The appliance's host name."),
    _rbv("SDKVersion_RBV", "stringIn", "string", "The appliance's version.", initial=_VERSION),
    _rbv("FirmwareVersion_RBV", "stringIn", "string", "The appliance's version.", initial=_VERSION),
    _rbv(
        "ADCoreVersion_RBV", "stringIn", "string", "ADCore version whose PVs these follow.", initial="3.12.1"
    ),
    _rbv("DriverVersion_RBV", "stringIn", "string", "The appliance's version.", initial=_VERSION),
    _rbv("UniqueId_RBV", "longIn", "long", "Frame number of the newest frame received."),
    _rbv("ArraySizeX_RBV", "longIn", "long", "Frame width (pixels)."),
    _rbv("ArraySizeY_RBV", "longIn", "long", "Frame height (pixels)."),
    _rbv("ArraySizeZ_RBV", "longIn", "long", "0 (monochrome frames)."),
    _rbv("ArraySize0_RBV", "longIn", "long", "Frame width (pixels)."),
    _rbv("ArraySize1_RBV", "longIn", "long", "Frame height (pixels)."),
    _rbv("ArraySize2_RBV", "longIn", "long", "0 (monochrome frames)."),
    _rbv("DataType_RBV", "mbbIn", "enum", "Pixel type of the frames.", choices=AD_DATA_TYPES),
    _rbv("ColorMode_RBV", "mbbIn", "enum", "Mono.", choices=AD_COLOR_MODES),
)

_CLASSIC = " (classic ophyd's `HDF5Plugin` declares it)."
_SIZE_LIMITS = (0, 1 << 30)

#: The rest of what classic ophyd's ``HDF5Plugin`` declares (so that ``wait_for_connection(all_signals=True)``
#: succeeds): NDFileHDF5 options the appliance does not have, kept and shown back without effect, and
#: NDPluginBase statistics it does not keep (0).
HDF_CLASSIC_PVS: tuple[PvSpec, ...] = (
    *_stored("HDF1:AutoSave", "boolOut", "enum", "Auto save." + _NOOP, 0, choices=_NO_YES),
    *_stored("HDF1:DeleteDriverFile", "boolOut", "enum", "Delete driver file." + _NOOP, 0, choices=_NO_YES),
    *_stored("HDF1:ReadFile", "boolOut", "enum", "Read a file back." + _NOOP, 0, choices=("Done", "Read")),
    *_stored("HDF1:WriteFile", "boolOut", "enum", "Write a file now." + _NOOP, 0, choices=("Done", "Write")),
    *_stored("HDF1:FileFormat", "mbbOut", "enum", "File format: HDF5.", 0, choices=("HDF5",)),
    *_stored("HDF1:StoreAttr", "boolOut", "enum", "Store NDAttributes." + _NOOP, 0, choices=_NO_YES),
    *_stored("HDF1:StorePerform", "boolOut", "enum", "Store performance data." + _NOOP, 0, choices=_NO_YES),
    *_stored("HDF1:BoundaryAlign", "longOut", "long", "Boundary alignment." + _NOOP, 0, limits=_SIZE_LIMITS),
    *_stored(
        "HDF1:BoundaryThreshold", "longOut", "long", "Boundary threshold." + _NOOP, 65536, limits=_SIZE_LIMITS
    ),
    *_stored("HDF1:DataBitsOffset", "longOut", "long", "N-bit offset." + _NOOP, 0, limits=(0, 64)),
    *_stored("HDF1:NumDataBits", "longOut", "long", "N-bit precision." + _NOOP, 0, limits=(0, 64)),
    *_stored("HDF1:SZipNumPixels", "longOut", "long", "szip pixels." + _NOOP, 16, limits=(0, 1024)),
    *_stored("HDF1:ZLevel", "longOut", "long", "zlib level." + _NOOP, 6, limits=(0, 9)),
    *_stored(
        "HDF1:NumRowChunks",
        "longOut",
        "long",
        "Rows per chunk. Accepted and kept; no effect: one chunk is one whole frame, as the readback reads.",
        0,
        "The real rows per chunk: the frame's height, whatever was put.",
        limits=_SIZE_LIMITS,
    ),
    *_stored(
        "HDF1:NumColChunks",
        "longOut",
        "long",
        "Columns per chunk. Accepted and kept; no effect: one chunk is one whole frame, as the"
        " readback reads.",
        0,
        "The real columns per chunk: the frame's width, whatever was put.",
        limits=_SIZE_LIMITS,
    ),
    *_stored(
        "HDF1:NumFramesFlush", "longOut", "long", "Frames between flushes." + _NOOP, 0, limits=_SIZE_LIMITS
    ),
    *_stored("HDF1:ExtraDimSizeN", "longOut", "long", "Extra dimension N." + _NOOP, 1, limits=_SIZE_LIMITS),
    *_stored("HDF1:ExtraDimSizeX", "longOut", "long", "Extra dimension X." + _NOOP, 1, limits=_SIZE_LIMITS),
    *_stored("HDF1:ExtraDimSizeY", "longOut", "long", "Extra dimension Y." + _NOOP, 1, limits=_SIZE_LIMITS),
    *_stored(
        "HDF1:MinCallbackTime",
        "aOut",
        "double",
        "Minimum time between callbacks." + _NOOP,
        0.0,
        units="s",
        limits=(0.0, 3600.0),
    ),
    *_stored(
        "HDF1:DroppedArrays",
        "longOut",
        "long",
        "Frames the receiver dropped since the last put to it (a put of 0 resets the count, as in"
        " areaDetector); each refresh writes the count back here.",
        0,
        limits=(0, 2**31 - 1),
    ),
    _rbv("HDF1:ArrayRate_RBV", "aIn", "double", "Frames received per second.", units="Hz"),
    _rbv(
        "HDF1:TimeStamp_RBV",
        "aIn",
        "double",
        "Receive time of the newest frame (Unix seconds).",
        units="s",
        fields={"PREC": 3},
    ),
    _rbv("HDF1:NDimensions_RBV", "longIn", "long", "2 (frames are 2D).", initial=2),
    _rbv("HDF1:Dimensions_RBV", "WaveformIn", "short[10]", "Frame dimensions: width, height.", length=10),
    _rbv(
        "HDF1:BayerPattern_RBV",
        "mbbIn",
        "enum",
        "RGGB (no colour).",
        choices=("RGGB", "GBRG", "GRBG", "BGGR"),
    ),
    _rbv("HDF1:ExtraDimNameN_RBV", "stringIn", "string", "Extra dimension name" + _CLASSIC, initial="n"),
    _rbv("HDF1:ExtraDimNameX_RBV", "stringIn", "string", "Extra dimension name" + _CLASSIC, initial="X"),
    _rbv("HDF1:ExtraDimNameY_RBV", "stringIn", "string", "Extra dimension name" + _CLASSIC, initial="Y"),
    _rbv("HDF1:FileNumber_Sync", "longIn", "long", "Internal to ADCore" + _CLASSIC),
    _rbv("HDF1:FileNumber_write", "longIn", "long", "Internal to ADCore" + _CLASSIC),
    _rbv("HDF1:AsynIO", "stringIn", "string", "asyn record stand-in" + _CLASSIC),
    _rbv("HDF1:IOSpeed", "aIn", "double", "File write speed: 0 (not measured).", units="MB/s"),
    _rbv("HDF1:RunTime", "aIn", "double", "File write time: 0 (not measured).", units="s"),
    _rbv("HDF1:QueueFree", "longIn", "long", "Free slots in the frame ring."),
    _rbv("HDF1:QueueFreeLow", "longIn", "long", "10 % of the ring: `QueueFree` below it is low."),
    _rbv("HDF1:QueueUse", "longIn", "long", "Used slots in the frame ring."),
    _rbv("HDF1:QueueUseHIGH", "longIn", "long", "80 % of the ring (as `QueueFill_RBV`'s HIGH)."),
    _rbv("HDF1:QueueUseHIHI", "longIn", "long", "95 % of the ring (as `QueueFill_RBV`'s HIHI)."),
    *_pool_pvs("HDF1:"),
)

#: the suffix a file carries while it is written (`edge.store` writes ``NAME.h5.part``, renamed once complete)
TEMP_SUFFIX = ".part"
#: areaDetector's extra (scan) dimensions of NDFileHDF5, in its order
_EXTRA_DIMS = ("N", "X", "Y", *(str(i) for i in range(3, 10)))
_NO_BLOSC = " (`Compression` is BSLZ4 only.)"
_NO_SORT = " (`SortMode` is Unsorted only.)"
_DIMENSION = {0: "the frame's width", 1: "the frame's height"}


def _dimension_pvs() -> tuple[PvSpec, ...]:
    """``Dim0SA``..``Dim9SA`` and their ``_RBV``s: areaDetector's one-element views of ``Dimensions``."""
    return tuple(
        _rbv(
            f"HDF1:Dim{i}SA{rbv}",
            "WaveformIn",
            "short[1]",
            f"Element {i} of `Dimensions{rbv}`: {_DIMENSION.get(i, '0 (frames are 2D)')}.",
            length=1,
        )
        for i in range(10)
        for rbv in ("", "_RBV")
    )


#: The rest of what ophyd's versioned ``HDF5Plugin_V22`` .. ``HDF5Plugin_V34`` declare (ADCore's NDArrayBase,
#: NDPluginBase, NDFile and NDFileHDF5 records), so that ``wait_for_connection(all_signals=True)`` succeeds:
#: what the appliance has, with its meaning (the frame's size, type and dimensions, its ring, the newest
#: frame's time, frames stored out of order); a setting whose other values would change what is stored
#: takes only the value the appliance has (any other put refused, MINOR SOFT, the reason in
#: ``StatusMessage_RBV`` and ``WriteMessage``); a setting of a feature that is off here (Blosc, sorting,
#: extra dimensions and positions, as their siblings above) is kept and shown back without effect.
HDF_VERSIONED_PVS: tuple[PvSpec, ...] = (
    # --- NDArrayBase: the frames the writer takes -----------------------------------------------
    *_stored(
        "HDF1:ArrayCallbacks",
        "boolOut",
        "enum",
        "Frames passed on to plugins after the writer." + _NOOP + " No plugin takes frames from the writer.",
        1,
        choices=DISABLE_ENABLE,
    ),
    _rbv(
        "HDF1:ArraySize_RBV",
        "longIn",
        "long",
        "Bytes per frame (width x height x pixel size).",
        units="bytes",
    ),
    _rbv("HDF1:ArraySize2", "longIn", "long", "0 (monochrome frames), as NDFile names it.", initial=0),
    *(
        _rbv(f"HDF1:ArraySize{i}{rbv}", "longIn", "long", "0 (frames are 2D).", initial=0)
        for i in range(3, 10)
        for rbv in ("", "_RBV")
    ),
    *_pixel_format("HDF1:"),
    PvSpec(
        "HDF1:NDimensions",
        "longOut",
        "long",
        "Dimensions of a frame: 2 only (`NDimensions_RBV`).",
        initial=2,
        only=2,
        only_why="frames are 2D (width x height)",
    ),
    _rbv(
        "HDF1:Dimensions",
        "WaveformIn",
        "short[10]",
        "Frame dimensions: width, height, then 0 (as `Dimensions_RBV`: the frame's own; no writes).",
        length=10,
    ),
    *_dimension_pvs(),
    _rbv(
        "HDF1:EpicsTSSec_RBV",
        "longIn",
        "long",
        "Receive time of the newest frame, EPICS seconds (since 1990-01-01 UTC); 0 until the first frame.",
        units="s",
    ),
    _rbv("HDF1:EpicsTSNsec_RBV", "longIn", "long", "Nanoseconds of `EpicsTSSec_RBV`.", units="ns"),
    _rbv("HDF1:NumQueuedArrays", "longIn", "long", "Frames queued in the frame ring (as `QueueUse`)."),
    PvSpec(
        "HDF1:EmptyFreeList",
        "boolOut",
        "enum",
        "Empty the NDArray pool's free list. Accepted; no effect: the appliance has no NDArray pool (its"
        " frame ring is `QueueSize_RBV`).",
        choices=("Done", "Empty"),
        initial=0,
    ),
    PvSpec(
        "HDF1:NDAttributesMacros",
        "longStringOut",
        "char[256]",
        "NDAttributes file macros." + _NOOP,
        length=LONG_STRING,
        initial="",
    ),
    _rbv(
        "HDF1:NDAttributesStatus",
        "mbbIn",
        "enum",
        "Attributes file OK: the appliance reads no NDAttributes file (`NDAttributesFile` is kept without"
        " effect).",
        choices=("Attributes file OK", "File not found", "XML syntax error", "Macro substitution error"),
        initial=0,
    ),
    # --- NDPluginBase: the writer as a plugin ---------------------------------------------------
    _rbv(
        "HDF1:ExecutionTime_RBV",
        "aIn",
        "double",
        "Time the writer took for the newest frame: 0 (not measured).",
        units="ms",
    ),
    *_stored(
        "HDF1:DroppedOutputArrays",
        "longOut",
        "long",
        "Frames dropped on their way to plugins after the writer: 0 only (none follows it).",
        0,
        only=0,
        only_why="no plugin takes frames from the writer, so it drops none",
    ),
    *_stored(
        "HDF1:DisorderedArrays",
        "longOut",
        "long",
        "Frames stored after later ones (overtaken in the stream: the receiver's `frames_reordered`) since "
        "the last put to it (a put of 0 resets the count, as in areaDetector); each refresh writes the "
        "count back here.",
        0,
        "Frames stored after later ones since the last put to `DisorderedArrays` (the receiver's count).",
        limits=(0, 2**31 - 1),
    ),
    *_stored(
        "HDF1:NumThreads",
        "longOut",
        "long",
        "Writer threads: 1 only.",
        1,
        only=1,
        only_why="the appliance writes from one thread (as NDFileHDF5, which takes 1 only)",
    ),
    _rbv("HDF1:MaxThreads_RBV", "longIn", "long", "1: the writer's one thread.", initial=1),
    *_stored(
        "HDF1:SortMode",
        "mbbOut",
        "enum",
        "Unsorted only: a frame overtaken by later ones is stored when it comes (`DisorderedArrays`).",
        0,
        choices=("Unsorted", "Sorted"),
        only=0,
        only_why="frames are stored as they come; each file's `frame_number` says which frame a row is",
    ),
    *_stored(
        "HDF1:SortSize", "longOut", "long", "Sort queue size." + _NOOP + _NO_SORT, 20, limits=_SIZE_LIMITS
    ),
    *_stored(
        "HDF1:SortTime",
        "aOut",
        "double",
        "Sort time." + _NOOP + _NO_SORT,
        0.1,
        units="s",
        limits=(0.0, 3600.0),
    ),
    _rbv("HDF1:SortFree", "longIn", "long", "Free sort-queue slots: 0 (no sort queue)."),
    _rbv(
        "HDF1:SortFreeLow", "aIn", "double", "Internal to ADCore (`SortFree`'s low mark): 0 (no sort queue)."
    ),
    *_stored(
        "HDF1:MaxArrayRate",
        "aOut",
        "double",
        "Highest frame rate the writer takes: 0 only (no limit).",
        0.0,
        units="Hz",
        only=0,
        only_why="the appliance stores every frame it receives",
    ),
    _rbv(
        "HDF1:MaxArrayRate_COUT",
        "aIn",
        "double",
        "Internal to ADCore (the link from `MaxArrayRate` to `MinCallbackTime`): 0.",
    ),
    *_stored(
        "HDF1:MaxByteRate",
        "aOut",
        "double",
        "Highest byte rate the writer takes: 0 only (no limit).",
        0.0,
        units="B/s",
        only=0,
        only_why="the appliance stores every frame it receives",
    ),
    PvSpec(
        "HDF1:ProcessPlugin",
        "boolOut",
        "enum",
        "Process the last frame again. Accepted; no effect: the writer stores each frame once.",
        choices=("Done", "Process"),
        initial=0,
    ),
    # --- NDFile / NDFileHDF5 --------------------------------------------------------------------
    *_stored(
        "HDF1:TempSuffix",
        "stringOut",
        "string",
        f"Suffix of a file while it is written: `{TEMP_SUFFIX}` only (every file is written as"
        f" NAME{TEMP_SUFFIX} and renamed once complete).",
        TEMP_SUFFIX,
        also_refused="any other suffix: refused, MINOR SOFT, `WriteMessage` says why",
    ),
    *_stored(
        "HDF1:FillValue",
        "aOut",
        "double",
        "Fill value of the data set: 0 only (rows not written read 0).",
        0.0,
        only=0,
        only_why="the data set has HDF5's default fill value, 0",
    ),
    *_stored(
        "HDF1:DimAttDatasets",
        "boolOut",
        "enum",
        "Dimension attribute data sets: No only.",
        0,
        choices=_NO_YES,
        only=0,
        only_why="the appliance writes no dimension attribute data sets",
    ),
    *_stored(
        "HDF1:NDAttributeChunk", "longOut", "long", "NDAttribute chunk size." + _NOOP, 0, limits=_SIZE_LIMITS
    ),
    *_stored(
        "HDF1:BloscCompressor",
        "mbbOut",
        "enum",
        "Blosc compressor." + _NOOP + _NO_BLOSC,
        0,
        choices=("BloscLZ", "LZ4", "LZ4HC", "SNAPPY", "ZLIB", "ZSTD"),
    ),
    *_stored("HDF1:BloscLevel", "longOut", "long", "Blosc level." + _NOOP + _NO_BLOSC, 5, limits=(0, 9)),
    *_stored(
        "HDF1:BloscShuffle",
        "mbbOut",
        "enum",
        "Blosc shuffle." + _NOOP + _NO_BLOSC,
        1,
        choices=("None", "Byte", "Bit"),
    ),
    _rbv(
        "HDF1:SWMRSupported_RBV",
        "boolIn",
        "enum",
        "Not Supported: the appliance writes no SWMR files (a file appears under its name, complete, when"
        " its capture ends).",
        choices=("Not Supported", "Supported"),
        initial=0,
    ),
    _rbv(
        "HDF1:SWMRActive_RBV", "boolIn", "enum", "Off (no SWMR files).", choices=("Off", "Active"), initial=0
    ),
    _rbv("HDF1:SWMRCbCounter_RBV", "longIn", "long", "SWMR flushes: 0 (no SWMR files).", initial=0),
    _rbv(
        "HDF1:XMLValid_RBV",
        "boolIn",
        "enum",
        "Yes: the appliance's own layout (NXmx, frames at `/entry/data/data`) is always used"
        " (`XMLFileName` is kept without effect).",
        choices=_NO_YES,
        initial=1,
    ),
    _rbv(
        "HDF1:XMLErrorMsg_RBV",
        "longStringIn",
        "char[256]",
        "Layout XML error: empty (no layout XML is read).",
        length=LONG_STRING,
        initial="",
    ),
    *(
        _rbv(
            f"HDF1:ExtraDimName{d}_RBV",
            "stringIn",
            "string",
            "Extra dimension name.",
            initial=f"scan dimension {d}",
        )
        for d in _EXTRA_DIMS[3:]
    ),
    *(
        spec
        for d in _EXTRA_DIMS[3:]
        for spec in _stored(
            f"HDF1:ExtraDimSize{d}",
            "longOut",
            "long",
            f"Extra dimension {d}." + _NOOP,
            1,
            limits=_SIZE_LIMITS,
        )
    ),
    *(
        spec
        for d in _EXTRA_DIMS[1:]
        for spec in _stored(
            f"HDF1:ExtraDimChunk{d}",
            "longOut",
            "long",
            f"Chunking along extra dimension {d}." + _NOOP,
            1,
            limits=_SIZE_LIMITS,
        )
    ),
    *(
        spec
        for what, name in (("", "PosName"), ("index ", "PosIndex"))
        for d in _EXTRA_DIMS
        for spec in _stored(
            f"HDF1:{name}Dim{d}",
            "stringOut",
            "string",
            f"Position mode: {what}attribute of dimension {d}." + _NOOP,
            "",
        )
    ),
)

_NO_SUCH = (
    " The appliance has no shutter: kept and shown back, no effect (as areaDetector with `ShutterMode` None)."
)
_WHOLE = "frames are stored whole, as the detector sends them"

#: The rest of what classic ophyd's ``AreaDetectorCam`` declares on a driver (so that a stock
#: ``SingleTrigger``/``DetectorBase`` device on the appliance's prefix connects every signal and
#: reads its configuration): what the appliance has, with its meaning; what it cannot do, taking only
#: the value it has (any other put refused, MINOR SOFT, the reason in ``StatusMessage_RBV``).
CAM_CLASSIC_PVS: tuple[PvSpec, ...] = (
    *_stored(
        "ArrayCallbacks",
        "boolOut",
        "enum",
        "Enable only: the appliance never stops passing frames to its writer and reductions.",
        1,
        choices=DISABLE_ENABLE,
        only=1,
        only_why="the appliance never stops passing frames to its writer and reductions",
    ),
    _rbv("ArraySize_RBV", "longIn", "long", "Bytes per frame (width x height x pixel size).", units="bytes"),
    _rbv("MaxSizeX_RBV", "longIn", "long", "Detector width (pixels)."),
    _rbv("MaxSizeY_RBV", "longIn", "long", "Detector height (pixels)."),
    *_stored(
        "SizeX", "longOut", "long", "Frame width: the detector's only.", None, only="width", only_why=_WHOLE
    ),
    *_stored(
        "SizeY", "longOut", "long", "Frame height: the detector's only.", None, only="height", only_why=_WHOLE
    ),
    *_stored("MinX", "longOut", "long", "Region start: 0 only.", 0, only=0, only_why=_WHOLE),
    *_stored("MinY", "longOut", "long", "Region start: 0 only.", 0, only=0, only_why=_WHOLE),
    *_stored("BinX", "longOut", "long", "Binning: 1 only.", 1, only=1, only_why=_WHOLE),
    *_stored("BinY", "longOut", "long", "Binning: 1 only.", 1, only=1, only_why=_WHOLE),
    *_stored(
        "ReverseX", "boolOut", "enum", "Mirroring: No only.", 0, choices=_NO_YES, only=0, only_why=_WHOLE
    ),
    *_stored(
        "ReverseY", "boolOut", "enum", "Mirroring: No only.", 0, choices=_NO_YES, only=0, only_why=_WHOLE
    ),
    *_pixel_format(""),
    *_stored("Gain", "aOut", "double", "Gain: 1 only.", 1.0, only=1.0, only_why="the appliance sets no gain"),
    *_stored(
        "NumExposures",
        "longOut",
        "long",
        "Exposures per frame: 1 only.",
        1,
        only=1,
        only_why="the detector sums no exposures into a frame",
    ),
    _rbv(
        "NumExposuresCounter_RBV",
        "longIn",
        "long",
        "Exposures of the newest frame: 1 once the acquisition's first frame has arrived, else 0.",
    ),
    _rbv(
        "NumImagesCounter_RBV",
        "longIn",
        "long",
        "Frames received in the detector's current (or last) acquisition, its newest series, whoever"
        " started it (this Acquire, or a client at the camera's own PVs, as during a capture); 0 from an"
        " Acquire here until its series starts.",
    ),
    _rbv(
        "TimeRemaining_RBV",
        "aIn",
        "double",
        "Seconds left of the current acquisition: frames still to come x `AcquirePeriod` (0 when idle).",
        units="s",
    ),
    *_stored(
        "TriggerMode",
        "mbbOut",
        "enum",
        "Given to the detector (its own `TriggerMode`) at the next `Acquire`: Internal, or External (the "
        "detector then waits for its hardware triggers).",
        0,
        choices=TRIGGER_MODES,
    ),
    *_stored(
        "FrameType",
        "mbbOut",
        "enum",
        "Given to the detector (its own `FrameType`) at the next `Acquire`: the image key of the frames it "
        "takes (Normal 0 projection, FlatField 1 flat, Background 2 dark, as NXtomo's `image_key`; the frames"
        " carry no rotation angle: give the projections' with `Reduction:TomoAngleStart` and"
        " `Reduction:TomoAngleStep`). A detector without `FrameType` takes Normal only (another value fails"
        " the acquisition, saying why). Each `Acquire` is a run of its own unless `HDF1:Capture` is open"
        " across them: darks and flats normalise the projections of their own run only, so take a"
        " tomography scan's darks, flats and projections within one capture (docs/bluesky.md).",
        0,
        choices=FRAME_TYPES,
    ),
    PvSpec(
        "ReadStatus",
        "boolOut",
        "enum",
        "Read the status now: accepted; the readbacks refresh on their own twice a second.",
        choices=("Done", "Read"),
        initial=0,
    ),
    *_stored(
        "Temperature",
        "aOut",
        "double",
        "Temperature setpoint: the appliance does not cool the detector; kept and shown back, no effect.",
        25.0,
        units="C",
        limits=(-273.15, 1000.0),
    ),
    _rbv(
        "TemperatureActual",
        "aIn",
        "double",
        "Detector temperature: not measured (NaN, with the record's INVALID UDF alarm).",
        units="C",
    ),
    *_stored(
        "ShutterMode",
        "mbbOut",
        "enum",
        "None only: the appliance drives no shutter.",
        0,
        choices=SHUTTER_MODES,
        only=0,
        only_why="the appliance drives no shutter",
    ),
    *_stored("ShutterControl", "boolOut", "enum", "Shutter." + _NO_SUCH, 0, choices=CLOSE_OPEN),
    *(
        spec
        for name in ("ShutterOpenDelay", "ShutterCloseDelay")
        for spec in _stored(
            name, "aOut", "double", "Shutter." + _NO_SUCH, 0.0, units="s", limits=(0.0, MAX_PERIOD_S)
        )
    ),
    _rbv("ShutterStatus_RBV", "boolIn", "enum", "Closed (no shutter).", choices=CLOSED_OPEN),
    _rbv("ShutterStatusEPICS_RBV", "boolIn", "enum", "Closed (no shutter).", choices=CLOSED_OPEN),
    PvSpec("ShutterControlEPICS", "boolOut", "enum", "Shutter." + _NO_SUCH, choices=CLOSE_OPEN, initial=0),
    _rbv("ShutterOpenEPICS", "aIn", "double", "EPICS shutter link stand-in: 0 (no shutter)."),
    _rbv("ShutterCloseEPICS", "aIn", "double", "EPICS shutter link stand-in: 0 (no shutter)."),
    _rbv("ShutterFanout", "longIn", "long", "EPICS shutter fanout stand-in: 0 (no shutter)."),
    _rbv(
        "StringFromServer_RBV",
        "stringIn",
        "string",
        "asyn serial string: empty (no serial protocol).",
        initial="",
    ),
    _rbv(
        "StringToServer_RBV",
        "stringIn",
        "string",
        "asyn serial string: empty (no serial protocol).",
        initial="",
    ),
    _rbv(
        "AsynIO",
        "stringIn",
        "string",
        "asyn record stand-in (classic ophyd's `AreaDetectorCam` declares it).",
    ),
    *_pool_pvs(""),
)

#: Every record the appliance serves, in documentation order.
PVS: tuple[PvSpec, ...] = (
    # --- run control ---------------------------------------------------------------------------
    PvSpec(
        "Acquire",
        "boolOut",
        "enum",
        "Busy record. 1 arms and starts the detector for `NumImages` frames; a put with completion "
        "returns when every frame is stored or accounted for by a loss record. 0 aborts the run (it ends "
        "`abort`; the frames the detector did not take are recorded with the reason `aborted`: not "
        "lost, they were never sent, so not in `LostFrames_RBV`); a put of 0 with completion returns "
        "once the run has ended, so that a 1 put after it starts the next run; without completion it "
        "returns at once. While "
        "the store refuses new runs it takes no writes (Write access denied) and `StatusMessage_RBV` "
        "says why. A 1 while a run goes (from another client) starts nothing: it is refused, MINOR "
        "SOFT, and completes at once; the run goes on. **A 0 with completion on the channel whose 1 is "
        "still waiting for its completion does not abort**: EPICS's CA server (rsrv, in every IOC, "
        "areaDetector's too) serialises a channel's put-completions, so that 0 waits behind the 1, the "
        "run completes normally, and only then is the 0 taken. A 0 without completion on the same channel, "
        "or with completion from another channel or context (as ophyd-async's `stop`), aborts at once. "
        "Recommended on the same channel: put 0 without completion (pyepics `pv.put(0, wait=False)`), then "
        "wait for `Acquire_RBV` = 0 (see `docs/epics.md`).",
        choices=("Done", "Acquire"),
        also_refused="1 while a run goes: refused, MINOR SOFT (its put completes at once; the run goes on);"
        " 1 while the detector is disconnected, or sends a series this appliance did not start: refused,"
        " MINOR SOFT",
    ),
    _rbv(
        "AcquireBusy",
        "boolIn",
        "enum",
        "Internal: the record that holds `Acquire`'s put-completion while a run goes (processed by "
        "`Acquire`'s forward link), so that `Acquire` itself stays free to take a 0. Its value stays "
        "Done (a busy softioc record posts no value while it is busy): read `Acquire_RBV` or "
        "`DetectorState_RBV` to see a run going. No writes.",
        choices=("Done", "Busy"),
    ),
    _rbv(
        "AcquireAbortBusy",
        "boolIn",
        "enum",
        "Internal: processed by `Acquire`'s forward link before `AcquireBusy`. It holds the "
        "put-completion of a 0 that aborts a run until the run has ended, so that a 1 put right after "
        "it starts the next run (as a stop then a start from Bluesky do). No writes.",
        choices=("Done", "Busy"),
    ),
    _rbv(
        "Acquire_RBV",
        "boolIn",
        "enum",
        "Acquiring while a run is in progress.",
        choices=("Done", "Acquiring"),
    ),
    PvSpec("NumImages", "longOut", "long", "Frames per run.", limits=(1, MAX_IMAGES)),
    _rbv("NumImages_RBV", "longIn", "long", "Frames per run, as accepted."),
    PvSpec(
        "AcquirePeriod",
        "aOut",
        "double",
        "Seconds between frames (given to the detector; 0 = as fast as it can).",
        units="s",
        limits=(0.0, MAX_PERIOD_S),
        fields={"PREC": 6},  # as AcquireTime: a 2.5 kHz detector's 0.0004 s shows
    ),
    _rbv("AcquirePeriod_RBV", "aIn", "double", "Seconds between frames, as accepted.", units="s"),
    PvSpec(
        "Mode",
        "mbbOut",
        "enum",
        "Reduction mode of the next run (as `reduction.mode`; raw frames are always kept). Refused while "
        "a run is open, from `Acquire` 1 on (before its series begins too), and while a capture is open "
        "(`HDF1:Capture` 1), from before its first series to `Capture` 0 (MINOR SOFT, the reason in "
        "`StatusMessage_RBV`). A put with completion (as of every `Reduction:*` setpoint) completes once "
        "the next run's kernels are loaded: an install's first use of a mode compiles them (tens of "
        "seconds; the put waits at most 120 s), `StatusMessage_RBV` saying `Preparing MODE mode: its "
        "kernels are loading (N s)` meanwhile and `MODE mode ready` after (at once when they are loaded "
        "already; once a run has started meanwhile, from a put not waited for, the run's messages stand "
        "and the put says nothing more; a put of the value already in force says nothing). While such "
        "a put completes the record is busy: a further put to it waits until then, and is taken or "
        "refused as the appliance stands at that moment.",
        choices=MODES,
    ),
    _rbv("Mode_RBV", "mbbIn", "enum", "Reduction mode, as accepted.", choices=MODES),
    _rbv(
        "DetectorState_RBV",
        "mbbIn",
        "enum",
        "The detector's `DetectorState_RBV`, or `Disconnected` (MAJOR) while its IOC is unreachable "
        "(`Initializing` until its state is known, `Error` (MAJOR) for a state outside areaDetector's list; "
        "`Aborted` is MINOR).",
        choices=DETECTOR_STATES,
    ),
    _rbv(
        "DetectorConnected_RBV",
        "boolIn",
        "enum",
        "Whether the detector IOC is connected.",
        choices=("Disconnected", "Connected"),
    ),
    _rbv(
        "StatusMessage_RBV",
        "longStringIn",
        "char[256]",
        "What the appliance is doing, in words; a refused put's reason (`Refused NAME = value: why`, NAME "
        "without the prefix, an enum's value as `index (state)`) stays until the next state change, not "
        "only until the next good put.",
        length=LONG_STRING,
    ),
    _rbv(
        "RunUid_RBV",
        "longStringIn",
        "char[256]",
        "Run uid of the current (or last) run; from `HDF1:Capture` 1 on, of the run the capture's frames "
        "will be in.",
        length=LONG_STRING,
    ),
    *DRIVER_PVS,
    *CAM_CLASSIC_PVS,
    # --- counters ------------------------------------------------------------------------------
    PvSpec(
        "ArrayCounter",
        "longOut",
        "long",
        "Write to set the frame counter (e.g. 0 to reset it).",
        limits=(0, 2**31 - 1),
    ),
    _rbv(
        "ArrayCounter_RBV",
        "longIn",
        "long",
        "Frames received since start, counted on from the last value written to `ArrayCounter` (a long: "
        "past 2147483647 it wraps to negative, as areaDetector's counters).",
    ),
    _rbv("ArrayRate_RBV", "aIn", "double", "Frames received per second.", units="Hz"),
    _rbv("DroppedArrays_RBV", "longIn", "long", "Frames the receiver dropped (ring full, shutdown)."),
    _rbv("LostFrames_RBV", "longIn", "long", "Frames in loss records (the ledger's count)."),
    _rbv(
        "VetoedFrames_RBV",
        "longIn",
        "long",
        "Frames a mode dropped by its stated policy (serial blanks with `store.blanks = drop`), never "
        "losses: ended runs' (the ledger's) plus the open run's so far.",
    ),
    _rbv("LossRecords_RBV", "longIn", "long", "Loss records in the ledger."),
    _rbv("QueueSize_RBV", "longIn", "long", "Slots in the frame ring."),
    _rbv("QueueFree_RBV", "longIn", "long", "Free slots in the frame ring (LOW alarm below 10 %)."),
    _rbv("QueueFill_RBV", "aIn", "double", "Ring fill (HIGH/HIHI alarms at 80/95 %).", units="%"),
    # --- writer --------------------------------------------------------------------------------
    PvSpec(
        "HDF1:FilePath",
        "longStringOut",
        "char[256]",
        "Directory of the next capture's file; must be inside `store.roots` (default the store path), "
        "else refused (`WriteMessage` says why, `FilePathExists_RBV` No). Runs outside a capture are "
        "stored under the store path, named by run uid.",
        length=LONG_STRING,
        also_refused="a directory outside `store.roots`: refused, MINOR SOFT (and `WriteMessage`)",
    ),
    _rbv(
        "HDF1:FilePath_RBV",
        "longStringIn",
        "char[256]",
        "`FilePath`, as accepted, ending in `/` (areaDetector adds one).",
        length=LONG_STRING,
    ),
    PvSpec(
        "HDF1:FileName",
        "longStringOut",
        "char[256]",
        "Name of the next capture's file (through `FileTemplate`).",
        length=LONG_STRING,
    ),
    _rbv("HDF1:FileName_RBV", "longStringIn", "char[256]", "Name label, as accepted.", length=LONG_STRING),
    _rbv(
        "HDF1:FullFileName_RBV",
        "longStringIn",
        "char[256]",
        "Path of the capture's file (or the last file written; after a restart mid-capture, the "
        "capture's file).",
        length=LONG_STRING,
    ),
    PvSpec(
        "HDF1:Capture",
        "boolOut",
        "enum",
        "1 opens a capture (areaDetector Stream mode): the detector's acquisitions from now on make one "
        "run, written to the one file `FileTemplate` names, with no rollover; 0 closes it (its run ends "
        "`success`; a put of 0 with completion returns once the file is finished and `Capture_RBV` is 0)."
        " Frames outside a capture are stored all the same, in the store's rollover files. A 1 while a"
        " capture is open changes nothing: that capture goes on (`WriteMessage` says so).",
        choices=("Done", "Capture"),
        also_refused="1 while a series is being acquired (it is already a run, in its own file: open the"
        " capture before `Acquire` 1), when the file exists, its directory is missing (`CreateDirectory`"
        " 0) or outside `store.roots`, `FileName` is empty, the name `FileTemplate` makes is over 255"
        " bytes, or the last capture is still closing (`Capture_RBV` still 1 after a `Capture` 0 put"
        " without completion, its `NumCapture` reached, or its series aborted), or while the store refuses"
        " new runs (its frames would be refused: `StatusMessage_RBV` says `capture not opened: runs are"
        " refused: ...`): MINOR SOFT, `WriteMessage` (or `StatusMessage_RBV`) says why",
    ),
    _rbv(
        "HDF1:Capture_RBV",
        "boolIn",
        "enum",
        "Capturing while a capture (or a run) is open, until its file is closed.",
        choices=("Done", "Capturing"),
    ),
    PvSpec(
        "HDF1:NumCapture",
        "longOut",
        "long",
        "Frames to capture: the capture closes itself once this many are written (0 = until `Capture` 0; "
        "frames of an acquisition still arriving then go into the same file); put at or below the frames"
        " an open capture holds already, it closes that capture. Follows `NumImages` when that is put.",
        limits=(0, MAX_IMAGES),
    ),
    _rbv("HDF1:NumCapture_RBV", "longIn", "long", "Frames to capture, as accepted."),
    _rbv(
        "HDF1:NumCaptured_RBV",
        "longIn",
        "long",
        "Frames written in the open capture (across its acquisitions), else of the current (or last) run "
        "in closed files (of a run resuming a capture after a restart: the capture's file's).",
    ),
    _rbv(
        "HDF1:WriteStatus",
        "boolIn",
        "enum",
        "Write error (MAJOR) when the pipeline failed to store frames (since the daemon started): a bug,"
        " a file that could not be finished (a full disk, a capture directory gone read-only), or a full disk"
        " that kept frames from their file; each such frame is a loss record saying why.",
        choices=("Write OK", "Write error"),
    ),
    _rbv("HDF1:WriteMessage", "longStringIn", "char[256]", "Last write error, or empty.", length=LONG_STRING),
    _rbv("HDF1:FilesClosed_RBV", "longIn", "long", "Files closed since start."),
    *HDF_PLUGIN_PVS,
    *HDF_CLASSIC_PVS,
    *HDF_VERSIONED_PVS,
    # --- compression ---------------------------------------------------------------------------
    _rbv("Codec1:CompFactor_RBV", "aIn", "double", "Raw bytes / bitshuffle-LZ4 bytes since start."),
    # --- reduction -----------------------------------------------------------------------------
    _rbv("Reduction:Backend_RBV", "stringIn", "string", "Kernel backend in use (gpu, numba, numpy)."),
    _rbv("Reduction:Hits_RBV", "longIn", "long", "serial: hits in the newest run so far (0 in other modes)."),
    _rbv(
        "Reduction:HitRate_RBV",
        "aIn",
        "double",
        "serial: hits / frames of the newest run so far (0 in other modes).",
        units="%",
        fields={"PREC": 1},
    ),
    _rbv(
        "Reduction:SlicesDone_RBV",
        "longIn",
        "long",
        "tomo: slices reconstructed in the newest run (0 until its last projection; 0 in other modes).",
    ),
    _rbv(
        "Reduction:BeamCenterX_RBV",
        "aIn",
        "double",
        "Beam centre, fast axis (PONI poni2 / pixel2).",
        units="px",
    ),
    _rbv(
        "Reduction:BeamCenterY_RBV",
        "aIn",
        "double",
        "Beam centre, slow axis (PONI poni1 / pixel1).",
        units="px",
    ),
    _rbv(
        "Reduction:Distance_RBV",
        "aIn",
        "double",
        "Sample-detector distance.",
        units="m",
        fields={"PREC": 5},  # 10 um
    ),
    _rbv(
        "Reduction:Wavelength_RBV",
        "aIn",
        "double",
        "X-ray wavelength (1e-10 m = 1 angstrom reads 0.0000000001000 at PREC 13).",
        units="m",
        fields={"PREC": 13},  # 1e-14 m: 4 significant digits of a hard X-ray wavelength
    ),
    _rbv("Reduction:Bins_RBV", "longIn", "long", "Bins of the azimuthal integration."),
    _rbv(
        "Reduction:Unit_RBV",
        "stringIn",
        "string",
        "Radial unit (`reduction.unit`: 2th_deg, 2th_rad, q_nm^-1 or q_A^-1).",
    ),
    _rbv(
        "Reduction:PoniFile_RBV",
        "longStringIn",
        "char[256]",
        "PONI file of the geometry (empty: from the `geometry` settings).",
        length=LONG_STRING,
    ),
    # per-run parameters: each put goes through `ReductionControl.update` (refused while a run is open)
    *_param(
        "Reduction:CakeBins",
        "longOut",
        "long",
        "powder: azimuthal bins of a 2D cake (0 = no cake).",
        "cake_bins",
        limits=pv_input.field_limits(ReductionSettings, "cake_bins", (0, 3600)),
    ),
    *_param(
        "Reduction:MinPeaks",
        "longOut",
        "long",
        "serial: a frame with at least this many peaks is a hit.",
        "serial.min_peaks",
        limits=pv_input.field_limits(SerialSettings, "min_peaks", (0, 100_000)),
    ),
    *_param(
        "Reduction:MinSnr",
        "aOut",
        "double",
        "serial: a pixel is a peak candidate when its 3x3 box sum is this x its noise above the ring"
        " mean's (> 0).",
        "serial.min_snr",
        limits=pv_input.field_limits(SerialSettings, "min_snr", (0, 1000)),
    ),
    *_param(
        "Reduction:TomoCenter",
        "aOut",
        "double",
        "tomo: rotation axis column; NaN = estimated from the projections.",
        "tomo.center",
        units="px",
        limits=pv_input.field_limits(TomoSettings, "center", (-100_000, 100_000)),
        nan_means="estimated",
    ),
    *_param(
        "Reduction:TomoAngleStart",
        "aOut",
        "double",
        "tomo: the angle of the run's first projection that comes without one (areaDetector frames carry"
        " none), as tomoScan's RotationStart; with `Reduction:TomoAngleStep` the n-th such projection is at"
        " start + n x step; NaN = none given (such projections are stored, not reconstructed).",
        "tomo.angle_start",
        units="deg",
        limits=pv_input.field_limits(TomoSettings, "angle_start", (-100_000, 100_000)),
        nan_means="none given",
    ),
    *_param(
        "Reduction:TomoAngleStep",
        "aOut",
        "double",
        "tomo: degrees between consecutive projections that come without an angle (tomoScan's"
        " RotationStep); NaN = none given.",
        "tomo.angle_step",
        units="deg",
        limits=pv_input.field_limits(TomoSettings, "angle_step", (-360, 360)),
        nan_means="none given",
    ),
    *_param(
        "Reduction:TomoSlices",
        "longStringOut",
        "char[256]",
        "tomo: detector rows reconstructed while projections arrive, comma-separated "
        "(e.g. `100,256`; empty = the centre row).",
        "tomo.slices",
        length=LONG_STRING,
    ),
    *_param(
        "Reduction:Roi",
        "longStringOut",
        "char[256]",
        "ROI boxes, half-open rows and columns `r0:r1:c0:c1`, `;`-separated (e.g. `0:64:0:64;100:120:30:90`; "
        "empty = none); statistics in every mode but raw.",
        "roi",
        length=LONG_STRING,
    ),
    # --- latest profile and preview ------------------------------------------------------------
    _rbv("Profile1:Intensity_RBV", "WaveformIn", "double[bins]", "Latest integrated profile.", length="bins"),
    _rbv(
        "Profile1:Radial_RBV",
        "WaveformIn",
        "double[bins]",
        "Radial axis of the profile, bin centres (EGU `deg` for `2th_deg`, `rad` for `2th_rad`, `nm^-1` for "
        "`q_nm^-1`, `A^-1` for `q_A^-1`).",
        length="bins",
        units="radial",
    ),
    _rbv("Profile1:UniqueId_RBV", "longIn", "long", "Frames processed when the profile was taken."),
    _rbv(
        "Image1:ArrayData",
        "WaveformIn",
        "short[preview]",
        "Latest frame subsampled to at most 512 pixels a side (every n-th pixel: "
        "n = 1 up to 512, 8 for 4096), "
        "row-major, clipped to 0..32767 (CA has no unsigned 16-bit type); 0 elements until the first frame.",
        length="preview",
    ),
    _rbv("Image1:ArraySize0_RBV", "longIn", "long", "Preview width."),
    _rbv("Image1:ArraySize1_RBV", "longIn", "long", "Preview height."),
    # --- upstream ------------------------------------------------------------------------------
    _rbv(
        "Upstream:State_RBV",
        "mbbIn",
        "enum",
        "No consumer (MINOR), Connected, or Backlog (MINOR: data waits for a consumer).",
        choices=UPSTREAM_STATES,
    ),
    _rbv(
        "Upstream:PendingBytes_RBV", "aIn", "double", "Bytes stored but not yet verified upstream.", units="B"
    ),
    _rbv(
        "Upstream:LastAckedSeq_RBV", "longIn", "long", "Highest chunk sequence acknowledged by any consumer."
    ),
    _rbv("Upstream:Consumers_RBV", "longIn", "long", "Consumers connected now."),
    _rbv(
        "Upstream:ConsumerNames_RBV",
        "longStringIn",
        "char[256]",
        "Names of the known consumers.",
        length=LONG_STRING,
    ),
    # --- disk ----------------------------------------------------------------------------------
    _rbv("Disk:FreeBytes_RBV", "aIn", "double", "Free bytes on the store's disk.", units="B"),
    _rbv("Disk:UsedPercent_RBV", "aIn", "double", "Disk use (HIGH/HIHI alarms at 85/95 %).", units="%"),
    _rbv(
        "Disk:RetentionState_RBV",
        "mbbIn",
        "enum",
        "ok; pressure (MINOR): the store refuses new runs, its data not yet verified upstream is above the "
        "high-water mark; full (MAJOR): the store has no room left but its headroom.",
        choices=("ok", "pressure", "full"),
    ),
)

#: Setpoints that are actions or counters, that take one value only however they are checked
#: (``HDF1:TempSuffix``), or that ``reduction.json`` keeps (``Mode``, ``Reduction:``): not kept across a
#: restart by `edge.setpoint_autosave`
_NOT_AUTOSAVED = frozenset(
    {
        "Acquire",
        "Mode",
        "ReadStatus",
        "ShutterControl",
        "ShutterControlEPICS",
        "ArrayCounter",
        "HDF1:Capture",
        "HDF1:ArrayCounter",
        "HDF1:DroppedArrays",
        "HDF1:DisorderedArrays",
        "HDF1:EmptyFreeList",
        "HDF1:ProcessPlugin",
        "HDF1:TempSuffix",
        "HDF1:FlushNow",
        "HDF1:ReadFile",
        "HDF1:WriteFile",
    }
)
#: The setpoints kept across a daemon restart (``STORE/setpoints.json``, as areaDetector's autosave):
#: every read/write PV that configures the next acquisition or the writer and can take more than one value
AUTOSAVED: tuple[str, ...] = tuple(
    spec.name
    for spec in PVS
    if spec.writable and not spec.param and spec.only is None and spec.name not in _NOT_AUTOSAVED
)

ALARM_FIELDS: dict[str, dict[str, Any]] = {
    "QueueFill_RBV": {"HIGH": 80, "HSV": "MINOR", "HIHI": 95, "HHSV": "MAJOR"},
    "Disk:UsedPercent_RBV": {"HIGH": 85, "HSV": "MINOR", "HIHI": 95, "HHSV": "MAJOR"},
}
ENUM_SEVERITIES: dict[str, dict[str, str]] = {
    "DetectorState_RBV": _STATE_SEVERITY,
    "Upstream:State_RBV": {"No consumer": "MINOR", "Backlog": "MINOR"},
    "Disk:RetentionState_RBV": {"pressure": "MINOR", "full": "MAJOR"},
    "DetectorConnected_RBV": {"Disconnected": "MAJOR"},
    "HDF1:WriteStatus": {"Write error": "MAJOR"},
}
