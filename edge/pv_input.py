"""What a put to each of the appliance's PVs may carry, and why a bad one is refused.

Every rule here is read from the PV table (`edge.pv_table.PVS`), so a PV added there inherits it: an enum
takes only the indices of its choices, a long string at most ``length - 1`` bytes (UTF-8; CA clients
truncate a longer one to the record's size without saying so, so the record's last byte must stay
free), a number must be finite and inside the PV's ``limits``. Read-only records (``*In``) take no
writes at all (the IOC gives them an access-security group without WRITE and ``DISP=1``). A refusal is
``(reason, alarm status)``: the IOC keeps the setpoint's last good value, raises a MINOR alarm with that
status on the setpoint and puts the reason into ``StatusMessage_RBV``. The same rules render the
"bad put" column of ``docs/pvs.md``. Also here: the text forms of the list-valued reduction parameters
(``Reduction:Roi``, ``Reduction:TomoSlices``).
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import annotated_types
from pydantic import BaseModel

if TYPE_CHECKING:
    from edge.pv_table import PvSpec

__all__ = [
    "ALARM_HW_LIMIT",
    "ALARM_SOFT",
    "ALARM_STATE",
    "ALARM_WRITE",
    "clamped_side",
    "describe",
    "drive_limits",
    "field_limits",
    "format_roi",
    "format_rows",
    "parse_roi",
    "parse_rows",
    "refusal",
]

# EPICS alarm status codes (alarm.h), as softioc.alarm names them; kept here so nothing imports softioc
ALARM_WRITE = 2  # WRITE: a string that does not fit
ALARM_STATE = 7  # STATE: an enum index the record does not have
ALARM_HW_LIMIT = 11  # HWLIMIT: a number outside the PV's limits (or not finite)
ALARM_SOFT = 15  # SOFT: refused by the appliance's state (a run open, the store refusing runs, ...)

_NUMBER_KINDS = ("aOut", "longOut")
_ENUM_KINDS = ("boolOut", "mbbOut")
_STRING_KINDS = ("longStringOut", "stringOut")


def _max_bytes(spec: PvSpec) -> int:
    if spec.kind == "stringOut":
        return 39  # DBR_STRING: 40 bytes with the NUL
    return int(spec.length) - 1


_LONG_MIN = -(2**31)


def refusal(spec: PvSpec, value: Any, only: Any = None) -> tuple[str, int] | None:
    """Why ``value`` cannot be put to ``spec`` by its type and limits alone, or None. ``only`` is the
    one value a PV whose ``spec.only`` names a frame property has (the caller knows the frame)."""
    wrong = _type_refusal(spec, value)
    if wrong is not None:
        return wrong
    only = spec.only if only is None and not isinstance(spec.only, str) else only
    if only is not None and float(value) != float(only):
        shown = spec.choices[int(only)] if spec.choices else _num(float(only))
        return f"{shown} only: {spec.only_why}", ALARM_SOFT
    return None


def _type_refusal(spec: PvSpec, value: Any) -> tuple[str, int] | None:
    if not spec.writable:
        return "read-only", ALARM_WRITE
    if spec.kind in _ENUM_KINDS:
        try:
            index = int(value)
        except (TypeError, ValueError):
            return f"not an index of {'/'.join(spec.choices)}", ALARM_STATE
        if not 0 <= index < len(spec.choices):
            return (
                f"index {index} is not one of 0..{len(spec.choices) - 1} ({'/'.join(spec.choices)})",
                ALARM_STATE,
            )
        return None
    if spec.kind in _STRING_KINDS:
        if "\ufffd" in str(value):  # bytes that are no UTF-8 (softioc decodes them with errors="replace")
            # (the bytes themselves are gone by then: \ufffd stands for each that did not decode)
            reason = "not UTF-8 text (\\ufffd marks its undecodable bytes;"
            reason += " it would be stored as another name)"
            return reason, ALARM_WRITE
        size = len(str(value).encode("utf-8", errors="replace"))
        if size > _max_bytes(spec):
            return f"{size} bytes or more; at most {_max_bytes(spec)} fit", ALARM_WRITE
        return None
    if spec.kind in _NUMBER_KINDS:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return "not a number", ALARM_HW_LIMIT
        if math.isnan(number) and spec.nan_means:
            return None
        if not math.isfinite(number):
            return f"{number} is not a finite number", ALARM_HW_LIMIT
        if spec.limits is not None:
            low, high = spec.limits
            clamped = clamped_side(spec, number)
            if clamped is not None:
                return (
                    f"outside {_num(low)}..{_num(high)} (the record holds a put beyond the range at its"
                    " drive limit, one double past it)",
                    ALARM_HW_LIMIT,
                )
            if not low <= number <= high:
                # a DBR_DOUBLE beyond a long's range reaches a long record as its lowest value: say so
                beyond = (
                    " (a number beyond a long's range arrives as -2147483648)" if number == _LONG_MIN else ""
                )
                return f"{_num(number)} is outside {_num(low)}..{_num(high)}{beyond}", ALARM_HW_LIMIT
        return None
    return None


def drive_limits(spec: PvSpec) -> tuple[float, float]:
    """An ao setpoint's DRVL/DRVH: one double beyond each end of its ``limits``.

    An ao record publishes its drive limits as its control limits (what pyepics' ``get_ctrlvars`` and
    ophyd-async's ``limits.control`` read) and clamps a put beyond them to them before the IOC's checks
    see it. Set to the range itself, a put of 5000 to a 0..3600 PV would arrive as 3600 and be taken;
    one double beyond, it arrives outside the range and is refused, while clients read the range to an ulp
    (or, past 0, to the smallest normal double).
    """
    assert spec.limits is not None
    low, high = (float(limit) for limit in spec.limits)
    return _beyond(low, -math.inf), _beyond(high, math.inf)


def _beyond(limit: float, direction: float) -> float:
    """The next double after ``limit`` towards ``direction``; never a subnormal one (EPICS refuses to
    parse one into a field: "Number too large for field type"), so past 0 the smallest normal double."""
    step = math.nextafter(limit, direction)
    if step != 0.0 and abs(step) < sys.float_info.min:
        return math.copysign(sys.float_info.min, step)
    return step


def clamped_side(spec: PvSpec, value: Any) -> str | None:
    """``"above HIGH"``/``"below LOW"`` when ``value`` is an ao setpoint's drive limit (`drive_limits`):
    the record clamped a put beyond the range there; else None."""
    if spec.kind != "aOut" or spec.limits is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    low, high = drive_limits(spec)
    if number == high:
        return f"above {_num(spec.limits[1])}"
    if number == low:
        return f"below {_num(spec.limits[0])}"
    return None


def describe(spec: PvSpec) -> str:
    """What a bad put to ``spec`` does, in words (the "bad put" column of ``docs/pvs.md``)."""
    if not spec.writable:
        return "refused: no write access"
    text = ""
    if spec.kind in _ENUM_KINDS:
        text = f"index outside 0..{len(spec.choices) - 1}: refused, MINOR STATE"
        if spec.kind == "mbbOut":
            text += " (above 15, the record's own INVALID SOFT)"
    elif spec.kind in _STRING_KINDS:
        text = f"over {_max_bytes(spec)} bytes, or bytes that are no UTF-8: refused, MINOR WRITE"
    elif spec.kind in _NUMBER_KINDS:
        bounds = f"outside {_num(spec.limits[0])}..{_num(spec.limits[1])}" if spec.limits else ""
        if spec.kind == "aOut":
            bounds += (", " if bounds else "") + ("±inf" if spec.nan_means else "NaN, ±inf")
            if not spec.nan_means:
                bounds += " (NaN: the record's own INVALID UDF too)"
        text = f"{bounds}: refused, MINOR HWLIMIT" if bounds else ""
    parts = [text] if text else []
    if spec.param:
        parts.append(f"a value `reduction.{spec.param}` does not take, or a run open: refused, MINOR SOFT")
    if spec.also_refused:
        parts.append(spec.also_refused)
    if isinstance(spec.only, str):
        parts.append(f"any value but the frame's {spec.only.replace('_', ' ')}: refused, MINOR SOFT")
    elif spec.only is not None:
        shown = spec.choices[int(spec.only)] if spec.choices else _num(float(spec.only))
        parts.append(f"any value but {shown}: refused, MINOR SOFT")
    return "; ".join(parts) or "taken"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def field_limits(model: type[BaseModel], name: str, default: tuple[float, float]) -> tuple[float, float]:
    """The inclusive range of a settings field from its ``ge``/``gt``/``le``/``lt`` constraints.

    A strict bound (``gt``/``lt``) is not representable as an inclusive range; it is widened to the
    closed bound and the settings model refuses the bound itself when the value is applied.
    """
    low, high = default
    for item in model.model_fields[name].metadata:
        if isinstance(item, annotated_types.Ge | annotated_types.Gt):
            low = float(item.ge if isinstance(item, annotated_types.Ge) else item.gt)
        elif isinstance(item, annotated_types.Le | annotated_types.Lt):
            high = float(item.le if isinstance(item, annotated_types.Le) else item.lt)
    return low, high


def parse_roi(text: str) -> list[tuple[int, int, int, int]]:
    """``"r0:r1:c0:c1;r0:r1:c0:c1"`` -> ROI boxes (half-open rows and columns); ``""`` -> none."""
    boxes = []
    if not text.strip():
        return boxes
    for part in (p.strip() for p in text.split(";")):
        if not part:  # (taken as nothing, a typo changed what was asked silently: an outside probe)
            raise ValueError(f"an empty box in {text!r}: boxes are r0:r1:c0:c1, ';' between them")
        fields = part.split(":")
        if len(fields) != 4:
            raise ValueError(f"ROI {part!r} is not r0:r1:c0:c1")
        try:
            r0, r1, c0, c1 = (int(f) for f in fields)
        except ValueError:
            raise ValueError(f"ROI {part!r} is not four integers r0:r1:c0:c1") from None
        boxes.append((r0, r1, c0, c1))
    return boxes


def format_roi(boxes: list[Any]) -> str:
    return ";".join(":".join(str(int(v)) for v in box) for box in boxes)


def parse_rows(text: str) -> list[int]:
    """``"100,256"`` -> detector rows; ``""`` -> none (the centre row)."""
    rows = []
    if not text.strip():
        return rows
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:  # ("," read as the centre row, "40,,64" as 40,64: a typo changed the rows silently)
            raise ValueError(f"an empty row in {text!r}: rows are integers, ',' between them")
        try:
            rows.append(int(part))
        except ValueError:
            raise ValueError(f"row {part!r} is not an integer") from None
    return rows


def format_rows(rows: list[Any]) -> str:
    return ",".join(str(int(r)) for r in rows)
