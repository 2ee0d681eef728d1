"""``docs/pvs.md`` is generated from `edge.ioc.PVS`; this fails when the committed file is stale."""

from __future__ import annotations

from pathlib import Path

from edge.ioc import PVS
from edge.pvdocs import render

DOC = Path(__file__).resolve().parents[3] / "docs" / "pvs.md"


def test_docs_pvs_md_is_up_to_date() -> None:
    assert DOC.read_text() == render("EDGE:"), "docs/pvs.md is stale: run `edge pvdocs > docs/pvs.md`"


def test_every_pv_is_documented_once_and_named_the_areadetector_way() -> None:
    names = [spec.name for spec in PVS]
    assert len(names) == len(set(names))
    text = render("EDGE:")
    for spec in PVS:
        assert f"`EDGE:{spec.name}`" in text
        if spec.writable and f"{spec.name}_RBV" not in names:
            # (ADBase's WaitForPlugins, NDAttributesFile, ReadStatus and ShutterControlEPICS have no
            # readback in areaDetector either)
            no_rbv = ("Acquire", "ArrayCounter", "WaitForPlugins", "NDAttributesFile", "ReadStatus")
            no_rbv += ("ShutterControlEPICS",)
            assert spec.name in no_rbv or spec.name.startswith("HDF1:")
        assert len("EDGE:" + spec.name) <= 60


def test_the_pva_image_is_documented_and_the_rest_said_to_be_channel_access_only() -> None:
    text = render("EDGE:")
    assert "| `EDGE:Pva1:Image` | NTNDArray" in text
    for what in ("epics.pva_image", "epics.pva_rate_hz", "uniqueId", "FrameNumber"):
        assert what in text
    assert "**Channel Access only**" in text
