"""Writing one follow-up's results: RTSTRUCT, DICOM SEG, NIfTI, samples, preview, result.json.

Everything for a target is written into a hidden temporary folder beside the final one and
renamed into place at the end (``os.replace``), so a crash never leaves a half-written result
that looks finished: a target folder exists only when all its files do.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import imaging
from imaging import Volume

from .followup import FollowupResult
from .preview import CONTOUR, save_preview
from .qc import QcThresholds, binary_entropy, target_qc
from .records import TargetResult
from .review_sheet import write_review_sheet

RESULT_FILE = TargetResult.FILE


def target_done(out_dir: Path, name: str) -> TargetResult | None:
    """The result of an already finished target, or None (idempotent re-runs skip it)."""
    return TargetResult.read(out_dir / name)


def write_target(
    out_dir: Path,
    name: str,
    target: Volume,
    result: FollowupResult,
    outputs: set[str],
    roi_name: str,
    provenance: dict[str, Any],
    window: str | tuple[float, float],
    min_island_mm2: float | None,
    qc_thresholds: QcThresholds | None = None,
) -> TargetResult:
    """Write every requested artifact for one target; returns its result (as in result.json)."""
    tmp = staging_folder(out_dir, name)
    files: dict[str, str] = {}
    notes: list[str] = []
    version = provenance.get("software_version", "")
    dicom_ok = target.dicom is not None and target.dicom.headers is not None
    if "rtstruct" in outputs:
        if dicom_ok:
            imaging.write_rtstruct(result.mask, target, tmp / "rtstruct.dcm", roi_name, CONTOUR,  # the preview's green
                                   algorithm_name="P2SAM", algorithm_version=version,
                                   min_island_area_mm2=imaging.DEFAULT_MIN_ISLAND_AREA_MM2 if min_island_mm2 is None else min_island_mm2)
            files["rtstruct"] = "rtstruct.dcm"
    if "seg" in outputs:
        if dicom_ok:
            imaging.write_seg(result.mask, target, tmp / "seg.dcm", segment_label=roi_name, algorithm_name="P2SAM", algorithm_version=version)
            imaging.write_seg(result.probability, target, tmp / "probability_seg.dcm", fractional=True, segment_label=roi_name,
                              algorithm_name="P2SAM", algorithm_version=version, series_description="P2SAM probability", series_number=903)
            files["seg"] = "seg.dcm"
            files["probability_seg"] = "probability_seg.dcm"
    if "nifti" in outputs:
        imaging.write_nifti(result.mask, target, tmp / "mask.nii.gz")
        imaging.write_nifti(result.probability, target, tmp / "probability.nii.gz")
        files["mask"] = "mask.nii.gz"
        files["probability"] = "probability.nii.gz"
        if target.is_2d():
            imaging.write_picture_mask(result.mask[0], tmp / "mask.png")
            files["mask_png"] = "mask.png"
    if "samples" in outputs and result.samples is not None:
        imaging.write_nifti(result.samples, target, tmp / "samples.nii.gz")
        files["samples"] = "samples.nii.gz"
    if not dicom_ok and ({"rtstruct", "seg"} & outputs):
        notes.append("this follow-up is not a DICOM series, so it gets masks (NIfTI"
                     + (", PNG" if target.is_2d() else "") + "), the preview, the review sheet and result.json; "
                     "RTSTRUCT and SEG are written for DICOM series")
    qc = target_qc(result, target, qc_thresholds)
    if "preview" in outputs:
        write_preview(tmp / "preview.png", target, result, window, name)
        files["preview"] = "preview.png"
        prior_info = provenance.get("prior", {})
        files.update(write_review_sheet(tmp, name, target, result, qc, prior_info, window, roi_name,
                                        model=provenance.get("model", {}).get("name", "")))
    summary = {
        "target": name,
        "found": bool(result.mask.any()),
        "qc": qc,
        "registration": result.registration,
        "slices": [slice_summary(s) for s in result.slices],
        "warnings": result.warnings,
        "notes": notes,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "files": files,
        **provenance,
    }
    return publish(tmp, out_dir / name, summary)


def staging_folder(out_dir: Path, name: str) -> Path:
    """A fresh hidden folder beside ``out_dir/name`` to write a target into (stale ones removed)."""
    for stale in out_dir.glob(f".{name}.tmp-*"):  # left by a crashed earlier attempt
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, final: Path, summary: dict[str, Any]) -> TargetResult:
    """Write result.json (``summary`` as a TargetResult) into the staging folder, then rename the
    folder into place (atomic); returns the result."""
    result = TargetResult.model_validate(json.loads(json.dumps(summary, default=_json_default)))  # JSON types only
    (tmp / RESULT_FILE).write_text(json.dumps(result.to_json(), indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return result


def slice_summary(s) -> dict[str, Any]:
    d = s.segmentation.to_dict()
    d.update({"z": s.z, "prior_z": s.prior_z, "expected": s.expected, "sample_dice": s.sample_dice})
    return d


def write_preview(path: Path, target: Volume, result: FollowupResult, window, name: str) -> None:
    areas = result.mask.reshape(result.mask.shape[0], -1).sum(1)
    if areas.any():
        z = int(np.argmax(areas))
    elif result.slices:
        z = result.slices[len(result.slices) // 2].z
    else:
        z = target.shape[0] // 2
    seg = next((s.segmentation for s in result.slices if s.z == z), None)
    best = seg.best if seg is not None else None
    picture = imaging.to_model_input(target, z, window)
    # plain words (the caption is read by clinicians): prompt points inside (dots) / outside (crosses)
    what = "not found" if best is None else f"prompts: {best.n_pos} inside, {best.n_neg} outside"
    title = f"{name}  slice {z}  {what}"
    save_preview(path, picture, result.mask[z], result.probability[z],
                 best.points if best else None, best.labels if best else None, title=title)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


__all__ = ["RESULT_FILE", "target_done", "write_target", "binary_entropy"]
