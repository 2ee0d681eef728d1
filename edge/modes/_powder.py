"""``powder``: 1D azimuthal integration with Poisson errors (NXazint1d names), optionally a 2D cake."""

from __future__ import annotations

import base64
from typing import Any

import h5py
import numpy as np

from edge.h5template import LazyTemplate
from edge.modes._stage import (
    _HC_KEV_ANGSTROM,
    FrameResult,
    RunContext,
    _CorrectedStage,
    _described,
    _radial_axis,
    frame_row,
)
from edge.nxmx import write_pyfai_poni
from kernels import hdf5_filter_options, make_gain


class PowderStage(_CorrectedStage):
    """Azimuthal integration (pyFAI's histogram engine, no pixel splitting), NXazint1d names."""

    name = "powder"
    excludes_dummies = True
    reference = (
        "azimuthal integration by histogram without pixel splitting, as pyFAI's integrate1d/integrate2d "
        "method ('no', 'histogram', ...) (Ashiotis et al., J. Appl. Cryst. 48 (2015) 510); Poisson errors"
    )

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        cal = ctx.corrections
        cal.check(ctx.shape)
        gain = make_gain(ctx.shape, cal.flat, cal.mask)  # 1/flat, 0 at masked and unusable pixels
        excluded = gain == 0
        #: the pixels left out of every frame's profile (the mask, and pixels the flat makes unusable),
        #: stored with the profiles: the reduced file alone says what went into them
        self.excluded = excluded if excluded.any() else None
        common: dict[str, Any] = {
            "unit": ctx.unit,
            "mask": excluded if excluded.any() else None,
            "dark": cal.dark,
            "flat": cal.flat,
            "correct_solid_angle": cal.solid_angle,
            "polarization_factor": cal.polarization,
        }
        self.integrator = ctx.backend.integrator(
            ctx.geometry, ctx.shape, ctx.bins, error_model="poisson", **common
        )
        self.cake = None
        if ctx.params.cake_bins:
            self.cake = ctx.backend.integrator2d(
                ctx.geometry, ctx.shape, ctx.bins, ctx.params.cake_bins, error_model="poisson", **common
            )
        self.latest: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None
        # the profiles' axes and correction flags (and mask: gzip, milliseconds a file at 2048^2) are the
        # same in every file of the run: written once, copied (see edge/h5template.py)
        self._static = LazyTemplate(self._write_static)

    @property
    def radial(self) -> np.ndarray:
        return np.asarray(self.integrator.radial)

    independent = True

    def analyse(
        self, raw: np.ndarray | None, missing: np.ndarray | None = None
    ) -> tuple[Any, Any, dict[str, np.ndarray] | None]:
        assert raw is not None
        cake = None if self.cake is None else self.cake.integrate_full(raw, missing)
        return self.integrator.integrate_full(raw, missing), cake, self._roi_stats(raw, missing)

    def fold(self, analysis: Any, frame: int, image_key: int, angle: float) -> FrameResult:
        full, cake, roi = analysis
        self.frames += 1
        products: dict[str, Any] = {"I": full.intensity, "I_errors": full.sigma}
        if cake is not None:
            products["cake"] = cake.intensity
            products["cake_errors"] = cake.sigma
        self.latest = (full.intensity, None if cake is None else cake.intensity, full.count)
        result = FrameResult(products=products, row=frame_row(image_key, angle), live={"count": full.count})
        return self._with_roi(roi, result)

    def start(
        self,
        raw: np.ndarray | None,
        frame: int,
        image_key: int,
        angle: float,
        missing: np.ndarray | None = None,
    ) -> FrameResult:
        """On a backend whose sums run while the caller goes on (the GPU's feed, ``submit_full``): the
        profile started, queued behind the previous frame's, the cake and ROI statistics computed now,
        and the result's ``finish`` collects the profile (``held`` keeps the frame's device copy alive
        until then). Elsewhere, and for a frame with ``missing`` pixels, as every stage
        (``ModeStage.start``)."""
        if not self.integrator.overlaps or missing is not None:
            return super().start(raw, frame, image_key, angle, missing)
        assert raw is not None
        # with a cake, one copy to the device serves both integrations (the cake waits for its kernel)
        source = raw if self.cake is None else self.ctx.backend.module.to_device(raw)
        profile = self.integrator.submit_full(source)
        cake = None if self.cake is None else self.cake.integrate_full(source)
        roi = self._roi_stats(raw)
        return FrameResult(
            pending=lambda held=source: self.fold((profile(), cake, roi), frame, image_key, angle)
        )

    def settings_record(self) -> dict[str, Any]:
        cal = self.ctx.corrections
        return {
            **super().settings_record(),
            "bins": self.ctx.bins,
            "unit": self.ctx.unit,
            "cake_bins": self.ctx.params.cake_bins,
            "dark_applied": cal.dark is not None,
            "dark_file": cal.files.get("dark", (None, None))[0],
            "dark_file_sha256": cal.files.get("dark", (None, None))[1],
            "flat_applied": cal.flat is not None,
            "flat_file": cal.files.get("flat", (None, None))[0],
            "flat_file_sha256": cal.files.get("flat", (None, None))[1],
            "mask_applied": cal.mask is not None,
            **self._mask_file_record(),
            "solid_angle_applied": bool(cal.solid_angle),
            "polarization_applied": cal.polarization is not None,
            "polarization_factor": cal.polarization,
            "error_model": "poisson",
            **self._dummy_record(),
        }

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        self._write_profiles(entry, products)
        if self.cake is not None:
            self._write_cake(entry.create_group("reduced_2d"), products)

    def _write_profiles(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        """ROI statistics and the profiles (``reduced``, NXazint1d's NXdata) of ``products``."""
        super().write_products(entry, products)
        n = len(products)
        reduced = entry.create_group("reduced")
        reduced.attrs["NX_class"] = "NXdata"
        reduced.attrs["signal"] = "I"
        reduced.attrs["axes"] = [".", "radial_axis"]
        reduced.attrs["interpretation"] = "spectrum"
        reduced.attrs["definition"] = "NXazint1d"
        intensity = np.asarray([p["I"] for p in products], np.float64).reshape(n, -1)
        _described(reduced.create_dataset("I", data=intensity), "intensity", "arbitrary units")
        errors = np.asarray([p["I_errors"] for p in products], np.float64).reshape(n, -1)
        ds = reduced.create_dataset("I_errors", data=errors)
        _described(ds, "estimated intensity error", "arbitrary units")
        self._static.copy_into(reduced)  # radial_axis, radial_axis_edges, corrections
        reduced["profile"] = h5py.SoftLink(reduced.name + "/I")  # the name earlier files used
        reduced["radial"] = h5py.SoftLink(reduced.name + "/radial_axis")

    def _write_static(self, reduced: h5py.Group) -> None:
        """The parts of ``reduced`` every file of the run shares: the radial axis, its edges, and the
        corrections applied."""
        record = self.settings_record()
        quantity, units = _radial_axis(self.ctx.unit)
        _described(reduced.create_dataset("radial_axis", data=self.radial), quantity, units, self.ctx.unit)
        ds = reduced.create_dataset("radial_axis_edges", data=np.asarray(self.integrator.edges))
        _described(ds, f"{quantity} bin edges", units, self.ctx.unit)
        corrections = reduced.create_group("corrections")
        corrections.attrs["NX_class"] = "NXcollection"
        for key in (
            "dark_applied",
            "flat_applied",
            "mask_applied",
            "solid_angle_applied",
            "polarization_applied",
        ):
            corrections.create_dataset(key, data=bool(record[key]))
        if record["polarization_factor"] is not None:
            corrections.create_dataset("polarization_factor", data=float(record["polarization_factor"]))
        if self.excluded is not None:  # 1 = left out (pyFAI's convention for a mask)
            ds = corrections.create_dataset(
                "mask", data=self.excluded.astype(np.uint8), compression="gzip", shuffle=True
            )
            ds.attrs["meaning"] = (
                "pixels left out of every profile: the mask (reduction.mask_file, the PONI detector's"
                " own), and pixels whose flat is 0 or not finite; 1 = left out, as pyFAI's mask. Pixels"
                " of a frame's own dummy value or missing packets are left out of that frame besides"
            )
        corrections.create_dataset("error_model", data="poisson")
        corrections.create_dataset("integration_method", data="histogram, no pixel splitting (pyFAI 'no')")

    def _write_images(self, corrections: h5py.Group) -> None:
        """The dark and flat images the run applied, as read from their files (bitshuffle-LZ4), in the
        run's first reduced file only: with the stored mask and the PONI text, the run's reduced files
        alone reproduce its profiles upstream (an outside probe: they named the local files only).
        Written once a run, not copied into every file: a 2048^2 float flat is 16 MiB."""
        cal = self.ctx.corrections
        for name, image in (("dark", cal.dark), ("flat", cal.flat)):
            if image is None:
                continue
            ds = corrections.create_dataset(
                name,
                data=image,
                chunks=image.shape,
                **hdf5_filter_options(),  # type: ignore[arg-type]
            )
            path, digest = cal.files.get(name, (None, None))
            ds.attrs["file"] = str(path or "")
            ds.attrs["file_sha256"] = str(digest or "")
            ds.attrs["meaning"] = (
                "subtracted from every frame before its profile"
                if name == "dark"
                else "every frame (less the dark) divided by it before its profile; pixels where it is 0"
                " or not finite are left out (the mask)"
            )

    def _write_cake(self, cake: h5py.Group, products: list[dict[str, Any]]) -> None:
        """The cakes of ``products`` and their Poisson errors as NXazint2d's NXdata names them."""
        assert self.cake is not None
        quantity, units = _radial_axis(self.ctx.unit)
        cake.attrs["NX_class"] = "NXdata"
        cake.attrs["definition"] = "NXazint2d"
        cake.attrs["signal"] = "I"
        cake.attrs["axes"] = [".", "azimuthal_axis", "radial_axis"]
        cake.attrs["interpretation"] = "image"
        stack = np.asarray([p["cake"] for p in products], np.float32)
        image = cake.create_dataset("I", data=stack, compression="gzip", shuffle=True)
        _described(image, "intensity", "arbitrary units")
        errors = np.asarray([p["cake_errors"] for p in products], np.float32)
        ds = cake.create_dataset("I_errors", data=errors, compression="gzip", shuffle=True)
        _described(ds, "estimated intensity error", "arbitrary units")
        ds = cake.create_dataset("radial_axis", data=np.asarray(self.cake.radial))
        _described(ds, quantity, units, self.ctx.unit)
        ds = cake.create_dataset("radial_axis_edges", data=np.asarray(self.cake.edges))
        _described(ds, f"{quantity} bin edges", units, self.ctx.unit)
        ds = cake.create_dataset("azimuthal_axis", data=np.asarray(self.cake.azimuthal))
        _described(ds, "azimuthal bin center", "deg", "chi_deg")
        ds = cake.create_dataset("azimuthal_axis_edges", data=np.asarray(self.cake.azimuthal_edges))
        _described(ds, "azimuthal bin edges", "deg", "chi_deg")

    def write_reduced(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        """The reduced file's entry is an NXazint1d application (what ``nxvalidate -a NXazint1d``
        checks): the correction flags at its top, the instrument's wavelength, the profiles in
        ``reduced``. The cake, when configured, is an NXazint2d application of its own, the entry
        ``entry_2d`` beside it (same instrument and reduction record, its cakes in ``entry_2d/reduced``):
        one definition per entry, as each application's validator and reader expect."""
        self._write_profiles(entry, products)
        if entry.attrs.get("file_index") == 0:
            self._write_images(entry["reduced/corrections"])
        self._write_application(entry, "NXazint1d")
        if self.cake is not None:
            cake_entry = entry.file.create_group("entry_2d")
            cake_entry.attrs["NX_class"] = "NXentry"
            for name in ("run_uid", "file_kind"):
                if name in entry.attrs:
                    cake_entry.attrs[name] = entry.attrs[name]
            entry.file.copy(entry["reduction"], cake_entry, "reduction")
            self._write_application(cake_entry, "NXazint2d")
            self._write_cake(cake_entry.create_group("reduced"), products)
            cake_entry.attrs["default"] = "reduced"

    def _write_application(self, entry: h5py.Group, definition: str) -> None:
        """What NXazint1d and NXazint2d ask of their entry: the definition, the correction flags, the
        instrument's name, wavelength and source."""
        record = self.settings_record()
        entry.create_dataset("definition", data=definition)
        if definition == "NXazint1d":
            entry.attrs["default"] = "reduced"
        entry.create_dataset("solid_angle_applied", data=bool(record["solid_angle_applied"]))
        entry.create_dataset("polarization_applied", data=bool(record["polarization_applied"]))
        # each bin is the mean of its pixels (divided by their count, or their solid angle's sum)
        entry.create_dataset("normalization_applied", data=True)
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        instrument.create_dataset("name", data="edge appliance")
        mono = instrument.create_group("monochromator")
        mono.attrs["NX_class"] = "NXmonochromator"
        wavelength_a = float(self.ctx.geometry.wavelength) * 1e10
        mono.create_dataset("wavelength", data=wavelength_a).attrs["units"] = "angstrom"
        energy = _HC_KEV_ANGSTROM / wavelength_a if wavelength_a > 0 else float("nan")
        mono.create_dataset("energy", data=energy).attrs["units"] = "keV"
        # the geometry the profiles were computed with (pyFAI loads pyfai_poni/poni_file as it is): the
        # reduced file travels upstream alone with upstream.forward = reduced
        detector = instrument.create_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        write_pyfai_poni(detector, self.ctx.geometry, self.ctx.shape)
        source = instrument.create_group("source")
        source.attrs["NX_class"] = "NXsource"
        source.create_dataset("name", data="unknown")  # the detector's stream does not say
        source.create_dataset("type", data="Synchrotron X-ray Source")
        source.create_dataset("probe", data="x-ray")

    def live(self) -> dict[str, Any] | None:
        if self.latest is None:
            return None
        intensity, cake, count = self.latest
        out: dict[str, Any] = {
            "unit": self.ctx.unit,
            "radial": self.radial.tolist(),
            "intensity": np.nan_to_num(intensity).tolist(),
            "count": np.asarray(count, np.int64).tolist(),  # 0: a bin no pixel of this frame fell in
            "cake": None,
        }
        if cake is not None and self.cake is not None:
            finite = np.nan_to_num(cake.astype(np.float64))
            top = float(np.percentile(finite, 99.5)) or 1.0
            pixels = np.clip(finite * (255.0 / top), 0, 255).astype(np.uint8)
            out["cake"] = {
                "radial": np.asarray(self.cake.radial).tolist(),
                "azimuthal": np.asarray(self.cake.azimuthal).tolist(),
                "height": int(pixels.shape[0]),
                "width": int(pixels.shape[1]),
                "pixels_b64": base64.b64encode(pixels.tobytes()).decode("ascii"),
            }
        return out
