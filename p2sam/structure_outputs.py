"""Writing one follow-up's results for a multi-ROI job (``rois``): every structure in one set.

    target/rtstruct.dcm            ONE structure set with every ROI (prior's names, numbers,
                                   colours, RTROIInterpretedType)
    target/seg.dcm                 ONE DICOM SEG, one segment per structure (overlaps kept)
    target/probability_seg.dcm     the same, FRACTIONAL (probability)
    target/labels.nii.gz           label map: voxel = structure's label (result.json "label");
                                   where structures overlap the smaller one's label
    target/<slug>_mask.nii.gz, <slug>_probability.nii.gz, <slug>_samples.nii.gz,
    target/<slug>_preview.png, <slug>_review_sheet.png/.pdf    per structure
    target/result.json             per structure: QC (flags, volume), slices, warnings, files

Written into a staging folder and renamed into place like a one-ROI target (``p2sam.outputs``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import imaging
from imaging import Volume

from .followup import FollowupResult
from .outputs import publish, slice_summary, staging_folder, write_preview
from .qc import QcThresholds, target_qc
from .review_sheet import write_review_sheet
from .structures import Structure, label_map


@dataclass
class StructureResult:
    structure: Structure
    result: FollowupResult
    prior_info: dict[str, Any]  # digest, roi, prior volume_ml / area_mm2 (the review sheet's "change vs prior")


def write_structures_target(
    out_dir: Path,
    name: str,
    target: Volume,
    items: list[StructureResult],
    outputs: set[str],
    provenance: dict[str, Any],
    window: str | tuple[float, float],
    min_island_mm2: float | None,
    qc_thresholds: QcThresholds | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """Write every requested artifact of every structure on one target; returns result.json's content."""
    tmp = staging_folder(out_dir, name)
    version = provenance.get("software_version", "")
    dicom_ok = target.dicom is not None and target.dicom.headers is not None
    files: dict[str, str] = {}
    notes: list[str] = []
    if "rtstruct" in outputs and dicom_ok:
        rois = [imaging.RoiSpec(i.result.mask, i.structure.name, i.structure.color, i.structure.interpreted_type,
                                number=i.structure.number) for i in items]
        imaging.write_rtstruct_rois(rois, target, tmp / "rtstruct.dcm", algorithm_name="P2SAM", algorithm_version=version,
                                    min_island_area_mm2=min_island_mm2)
        files["rtstruct"] = "rtstruct.dcm"
    if "seg" in outputs and dicom_ok:
        segments = [imaging.SegmentSpec(i.structure.name, i.structure.interpreted_type) for i in items]
        imaging.write_seg_segments(np.stack([i.result.mask for i in items]), segments, target, tmp / "seg.dcm",
                                   algorithm_name="P2SAM", algorithm_version=version)
        imaging.write_seg_segments(np.stack([i.result.probability for i in items]), segments, target,
                                   tmp / "probability_seg.dcm", fractional=True, algorithm_name="P2SAM",
                                   algorithm_version=version, series_description="P2SAM probability", series_number=903)
        files["seg"] = "seg.dcm"
        files["probability_seg"] = "probability_seg.dcm"
    if "nifti" in outputs:
        imaging.write_nifti(label_map([i.result.mask for i in items]), target, tmp / "labels.nii.gz")
        files["labels"] = "labels.nii.gz"
    if not dicom_ok and ({"rtstruct", "seg"} & outputs):
        notes.append("this follow-up is not a DICOM series, so it gets masks (NIfTI"
                     + (", PNG" if target.is_2d() else "") + "), previews, review sheets and result.json; "
                     "RTSTRUCT and SEG are written for DICOM series")
    structures = []
    for label, item in enumerate(items, start=1):
        s, result = item.structure, item.result
        own = _structure_files(tmp, name, target, item, outputs, provenance, window, qc_thresholds)
        files.update({f"{s.slug}/{kind}": file for kind, file in own.pop("files").items()})
        structures.append({
            "name": s.name, "number": s.number, "label": label, "slug": s.slug, "color": list(s.color),
            "interpreted_type": s.interpreted_type, "found": bool(result.mask.any()), "qc": own["qc"],
            "registration": result.registration, "slices": [slice_summary(x) for x in result.slices],
            "warnings": result.warnings, "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
            "files": own["files_of_structure"], "prior": item.prior_info,
        })
    target_warnings = list(warnings or []) + [f"{st['name']}: {w}" for st in structures for w in st["warnings"]]
    summary = {
        "target": name,
        "found": any(st["found"] for st in structures),
        "qc": _target_qc(structures),
        "registration": items[0].result.registration if items else {},
        "structures": structures,
        "warnings": list(dict.fromkeys(target_warnings)),
        "notes": notes,
        "timings_s": _shared_timings(items),
        "files": files,
        **provenance,
    }
    return publish(tmp, out_dir / name, summary)


def _structure_files(tmp: Path, name: str, target: Volume, item: StructureResult, outputs: set[str],
                     provenance: dict[str, Any], window, qc_thresholds) -> dict[str, Any]:
    """One structure's masks, preview and review sheet (file names prefixed with its slug) and QC."""
    s, result = item.structure, item.result
    own: dict[str, str] = {}
    if "nifti" in outputs:
        own["mask"] = _write(lambda p: imaging.write_nifti(result.mask, target, p), tmp, f"{s.slug}_mask.nii.gz")
        own["probability"] = _write(lambda p: imaging.write_nifti(result.probability, target, p), tmp,
                                    f"{s.slug}_probability.nii.gz")
        if target.is_2d():
            own["mask_png"] = _write(lambda p: imaging.write_picture_mask(result.mask[0], p), tmp, f"{s.slug}_mask.png")
    if "samples" in outputs and result.samples is not None:
        own["samples"] = _write(lambda p: imaging.write_nifti(result.samples, target, p), tmp, f"{s.slug}_samples.nii.gz")
    qc = target_qc(result, target, qc_thresholds)
    if "preview" in outputs:
        own["preview"] = _write(lambda p: write_preview(p, target, result, window, f"{name} {s.name}"), tmp,
                                f"{s.slug}_preview.png")
        sub = tmp / f".sheet-{s.slug}-{os.getpid()}"
        sub.mkdir()
        written = write_review_sheet(sub, f"{name} {s.name}", target, result, qc, item.prior_info, window, s.name,
                                     model=provenance.get("model", {}).get("name", ""))
        for kind, file in written.items():
            os.replace(sub / file, tmp / f"{s.slug}_{file}")
            own[kind] = f"{s.slug}_{file}"
        sub.rmdir()
    return {"files": dict(own), "files_of_structure": dict(own), "qc": qc}


def _write(write, folder: Path, file: str) -> str:
    write(folder / file)
    return file


def _target_qc(structures: list[dict[str, Any]]) -> dict[str, Any]:
    """The target's QC: review when any structure needs it; flagged slices of any structure."""
    flagged: dict[int, list[str]] = {}
    for st in structures:
        for f in st["qc"].get("flagged_slices", []):
            flagged.setdefault(int(f["z"]), []).extend(f"{st['name']}: {r}" for r in f["reasons"])
    return {
        "review": any(st["qc"].get("review") for st in structures),
        "structures_to_review": [st["name"] for st in structures if st["qc"].get("review")],
        "flagged_slices": [{"z": z, "reasons": r} for z, r in sorted(flagged.items())],
    }


def _shared_timings(items: list[StructureResult]) -> dict[str, float]:
    """The follow-up's own timings (registration and encoding are shared) and each structure's decode time."""
    if not items:
        return {}
    shared = {k: round(v, 4) for k, v in items[0].result.timings.items() if k != "decode"}
    shared["decode_per_structure"] = [round(i.result.timings.get("decode", 0.0), 4) for i in items]
    return shared


__all__ = ["StructureResult", "write_structures_target"]
