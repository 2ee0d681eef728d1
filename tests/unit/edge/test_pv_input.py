"""The put rules every PV inherits from the table (`edge.pv_input`), without an IOC."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.config import MODES, ReductionSettings, SerialSettings
from edge.pv_input import (
    ALARM_HW_LIMIT,
    ALARM_SOFT,
    ALARM_STATE,
    ALARM_WRITE,
    describe,
    field_limits,
    format_roi,
    format_rows,
    parse_roi,
    parse_rows,
    refusal,
)
from edge.pv_table import PVS, PvSpec

BY_NAME = {spec.name: spec for spec in PVS}


def test_mode_is_the_reduction_mode_list() -> None:
    assert BY_NAME["Mode"].choices == MODES == ("raw", "powder", "serial", "tomo")
    assert BY_NAME["Mode_RBV"].choices == MODES


@pytest.mark.parametrize("spec", [s for s in PVS if s.kind in ("mbbOut", "boolOut")], ids=lambda s: s.name)
def test_enums_take_their_indices_only(spec: PvSpec) -> None:
    for index in range(len(spec.choices)):
        if spec.only is None or isinstance(spec.only, str) or index == spec.only:
            assert refusal(spec, index) is None
        else:  # a choice areaDetector has and the appliance does not (HDF1:Compression other than BSLZ4)
            assert refusal(spec, index) == (f"{spec.choices[spec.only]} only: {spec.only_why}", ALARM_SOFT)
    for bad in (len(spec.choices), 5, 7, 99, 65535, -1):
        if 0 <= bad < len(spec.choices):  # (HDF1:Compression has areaDetector's 8 choices)
            continue
        reason = refusal(spec, bad)
        assert reason is not None and reason[1] == ALARM_STATE, (spec.name, bad)


@pytest.mark.parametrize("spec", [s for s in PVS if s.kind == "longStringOut"], ids=lambda s: s.name)
def test_long_strings_refuse_what_does_not_fit(spec: PvSpec) -> None:
    assert refusal(spec, "x" * 255) is None
    assert refusal(spec, "x" * 256) == ("256 bytes or more; at most 255 fit", ALARM_WRITE)
    assert refusal(spec, "x" * 300) is not None
    assert refusal(spec, "é" * 128) is not None  # 256 bytes of UTF-8
    # bytes that are no UTF-8 reach the IOC as U+FFFD (softioc decodes with errors="replace"): taking
    # them would store a name nobody asked for (an outside probe: HDF1:FileName b"bad\xff\xfe")
    assert refusal(spec, b"bad\xff\xfe".decode("utf-8", errors="replace")) == (
        "not UTF-8 text (\\ufffd marks its undecodable bytes; it would be stored as another name)",
        ALARM_WRITE,
    )


def test_numbers_outside_their_limits_or_not_finite_are_refused() -> None:
    period = BY_NAME["AcquirePeriod"]
    assert refusal(period, 0.0) is None and refusal(period, 0.02) is None
    for bad in (-1.0, -1e-9, 3600.5, math.nan, math.inf, -math.inf):
        reason = refusal(period, bad)
        assert reason is not None and reason[1] == ALARM_HW_LIMIT, bad
    images = BY_NAME["NumImages"]
    assert refusal(images, 1) is None and refusal(images, 10_000_000) is None
    assert refusal(images, 0) is not None and refusal(images, -5) is not None
    # 1e12 put as a DBR_DOUBLE reaches the long record as its lowest value: the reason says so
    reason = refusal(images, -(2**31))
    assert reason is not None and "a number beyond a long's range arrives as -2147483648" in reason[0]
    assert "beyond a long" not in str(refusal(images, -5))
    center = BY_NAME["Reduction:TomoCenter"]
    assert refusal(center, math.nan) is None  # NaN: estimated
    assert refusal(center, math.inf) is not None


def test_read_only_records_refuse_everything() -> None:
    readonly = [s for s in PVS if not s.writable]
    assert len(readonly) >= 48
    for spec in readonly:
        assert refusal(spec, 0) is not None
        assert describe(spec) == "refused: no write access"


def test_every_writable_pv_says_what_a_bad_put_does_and_numbers_have_limits() -> None:
    for spec in PVS:
        if spec.writable:
            assert "refused" in describe(spec), spec.name
        if spec.writable and spec.kind in ("aOut", "longOut"):
            assert spec.limits is not None or spec.only is not None, spec.name


def test_settings_the_appliance_does_not_have_take_only_the_value_it_has() -> None:
    """Binning, regions, gain and the like: the one value the appliance has, or a refusal saying why;
    the frame's own width, height and pixel type are given by the caller (the IOC knows the frame)."""
    assert refusal(BY_NAME["BinX"], 1) is None
    assert refusal(BY_NAME["BinX"], 2) == (
        "1 only: frames are stored whole, as the detector sends them",
        ALARM_SOFT,
    )
    assert refusal(BY_NAME["Gain"], 1.0) is None and refusal(BY_NAME["Gain"], 2.5)[1] == ALARM_SOFT
    assert refusal(BY_NAME["Gain"], math.nan)[1] == ALARM_HW_LIMIT  # the type check comes first
    assert refusal(BY_NAME["ArrayCallbacks"], 0)[0].startswith("Enable only")
    assert refusal(BY_NAME["SizeX"], 512, only=512) is None
    assert refusal(BY_NAME["SizeX"], 100, only=512) == (
        "512 only: frames are stored whole, as the detector sends them",
        ALARM_SOFT,
    )
    assert refusal(BY_NAME["DataType"], 3, only=3) is None
    assert refusal(BY_NAME["DataType"], 9, only=3)[0].startswith("UInt16 only")
    assert "any value but the frame's width" in describe(BY_NAME["SizeX"])
    assert "any value but 1: refused" in describe(BY_NAME["NumExposures"])


def test_reduction_pvs_name_settings_that_exist_and_have_readbacks() -> None:
    settings = ReductionSettings().model_dump(mode="json")
    for spec in PVS:
        if spec.param:
            value = settings
            for key in spec.param.split("."):
                value = value[key]
            assert f"{spec.name}_RBV" in BY_NAME
    assert field_limits(SerialSettings, "min_peaks", (0, 1)) == (0, 100_000)


def test_roi_and_rows_text() -> None:
    assert parse_roi("") == []
    assert parse_roi("0:16:0:16; 20:40:8:24") == [(0, 16, 0, 16), (20, 40, 8, 24)]
    for bad in ("0:16:0", "a:b:c:d", "0:16:0:16:3"):
        with pytest.raises(ValueError):
            parse_roi(bad)
    assert parse_rows("100, 256") == [100, 256] and parse_rows("") == [] and parse_rows("  ") == []
    # an empty item is a typo, not nothing (an outside probe: "," read as the centre row, "40,,64" as 40,64)
    for typo in (",", "40,,64", "40,", ";"):
        with pytest.raises(ValueError, match="an empty row"):
            parse_rows(typo)
    for typo in (";", "0:4:0:4;;8:9:0:4", "0:4:0:4;"):
        with pytest.raises(ValueError, match="an empty box"):
            parse_roi(typo)
    with pytest.raises(ValueError):
        parse_rows("12,x")


@given(st.lists(st.tuples(*[st.integers(0, 10_000)] * 4), max_size=8))
def test_roi_text_round_trips(boxes: list[tuple[int, int, int, int]]) -> None:
    assert parse_roi(format_roi(boxes)) == boxes


@given(st.lists(st.integers(0, 10**6), max_size=20))
def test_rows_text_round_trips(rows: list[int]) -> None:
    assert parse_rows(format_rows(rows)) == rows
