"""Real multi-structure cases for the multi-ROI tests (issue 18), and the independent checks of
what a multi-ROI job wrote: dciodvfy, plastimatch's rasterisation of our RTSTRUCT, highdicom's
reading of our SEG.

- Visible Human (../shared/data/dicom/visible-human-ct4): the 4 real CT slices and the real
  structure set (BODY, SpinalCord); the follow-up is a copy of the series shifted by a few
  pixels, written as a new series in a new Frame of Reference.
- Breast (../shared/data/dicom/breast-rtss-1slice): the one real CT slice and a structure set
  with the vendor's 10 ROIs (names, numbers, colours, RTROIInterpretedType as the vendor wrote
  them). The vendor drew only BODY on this slice (the others on slices that are not here), so
  BODY keeps its vendor contour, Areola keeps no contour (as in the vendor file: "all" leaves it
  out), and the other eight are drawn on this real slice: the lung by threshold inside the body,
  the rest as discs inside the body.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import imaging
from bench.multiroi import shifted_copy
from imaging.rtstruct import rtstruct_rois


def visible_human_case(data: Path, out: Path) -> dict:
    src = data / "dicom" / "visible-human-ct4"
    prior_dir = out / "vh_prior"
    prior_dir.mkdir(parents=True)
    for f in src.glob("CT_*.dcm"):
        shutil.copy(f, prior_dir / f.name)
    shutil.copy(src / "RS_Body_SpinalCord.dcm", prior_dir / "RS_Body_SpinalCord.dcm")
    prior = imaging.read_image(sorted(prior_dir.glob("CT_*.dcm")))
    shifted_copy(prior, out / "vh_followup", "vh-followup")
    return {"prior": prior_dir, "rs": prior_dir / "RS_Body_SpinalCord.dcm", "followup": out / "vh_followup",
            "rois": ["BODY", "SpinalCord"]}


def breast_case(data: Path, out: Path) -> dict:
    src = data / "dicom" / "breast-rtss-1slice"
    prior_dir = out / "breast_prior"
    prior_dir.mkdir(parents=True)
    shutil.copy(src / "ct.0.dcm", prior_dir / "ct.0.dcm")
    prior = imaging.read_image(prior_dir / "ct.0.dcm")
    vendor = rtstruct_rois(src / "rtss.dcm")
    body = imaging.read_mask_detail(src / "rtss.dcm", prior, "BODY", allow_missing_references=True).mask
    drawn = _drawn_on_slice(prior, body, [r.name for r in vendor if r.name not in ("BODY", "Areola")])
    specs = []
    for r in vendor:
        mask = body if r.name == "BODY" else drawn.get(r.name, np.zeros(prior.shape, bool))
        specs.append(imaging.RoiSpec(mask, r.name, r.color, r.interpreted_type, number=r.number))
    rs = imaging.write_rtstruct_rois(specs, prior, prior_dir / "rtss_one_slice.dcm", min_island_area_mm2=0,
                                     algorithm_name="tests.p2sam.multiroi_data", generation_algorithm="MANUAL",
                                     series_description="vendor ROIs on the one real slice")
    shifted_copy(prior, out / "breast_followup", "breast-followup")
    with_contours = [r.name for r in vendor if r.name != "Areola"]
    return {"prior": prior_dir, "rs": rs, "followup": out / "breast_followup", "rois": with_contours,
            "vendor": vendor}


def _drawn_on_slice(prior: imaging.Volume, body: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Masks for the ROIs the vendor drew on other slices, on this real slice: discs of 10 mm
    radius inside the body (this slice is at the shoulders: hardly any lung to threshold), spread
    over it by farthest-point sampling (deterministic), each inside BODY as in a plan."""
    from scipy import ndimage

    radius_px = 10.0 / float(prior.spacing[0])
    yy, xx = np.mgrid[: prior.shape[1], : prior.shape[2]]
    inside = ndimage.binary_erosion(body[0], iterations=int(np.ceil(radius_px)) + 1)
    candidates = np.argwhere(inside)
    centres = [candidates[len(candidates) // 2]]
    far = np.full(len(candidates), np.inf)
    while len(centres) < len(names):
        far = np.minimum(far, ((candidates - centres[-1]) ** 2).sum(1))
        centres.append(candidates[int(np.argmax(far))])
    out = {}
    for name, (y, x) in zip(names, centres):
        out[name] = ((yy - y) ** 2 + (xx - x) ** 2 <= radius_px**2)[None] & body
        assert out[name].sum() > 100, name
    return out


# ----------------------------------------------------------------- independent checks
def dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        return []
    run = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=300, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def plastimatch_masks(rtstruct: Path, followup: Path, out: Path, target: imaging.Volume) -> dict[str, np.ndarray]:
    """plastimatch's rasterisation of every ROI of ``rtstruct`` onto the follow-up series, on the
    follow-up's grid ((z, y, x) bool); {} when plastimatch is not installed."""
    exe = shutil.which("plastimatch")
    if exe is None:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "convert", "--input", str(rtstruct), "--referenced-ct", str(followup),
                    "--output-prefix", str(out) + "/"], check=True, capture_output=True, timeout=600)
    masks = {}
    for mha in sorted(out.glob("*.mha")):
        nii = mha.with_suffix(".nii.gz")
        sitk.WriteImage(sitk.ReadImage(str(mha)), str(nii))
        try:
            masks[mha.stem] = imaging.read_mask(nii, target)
        except imaging.EmptyRoiError:
            masks[mha.stem] = np.zeros(target.shape, bool)
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def check_outputs(folder: Path, followup: Path, prior_rs: Path, rois: list[str], scratch: Path) -> dict[str, float]:
    """Everything issue 18 asks of a multi-ROI target folder; returns plastimatch Dice per ROI."""
    import json

    import highdicom as hd
    import pydicom

    target = imaging.read_image(followup)
    result = json.loads((folder / "result.json").read_text())
    assert [s["name"] for s in result["structures"]] == rois
    assert sorted(p.name for p in folder.glob("*.dcm")) == ["probability_seg.dcm", "rtstruct.dcm", "seg.dcm"]
    rs = folder / "rtstruct.dcm"
    assert dciodvfy_errors(rs) == [], dciodvfy_errors(rs)
    ds = pydicom.dcmread(rs)
    prior = {r.name: r for r in rtstruct_rois(prior_rs)}
    assert [r.ROIName for r in ds.StructureSetROISequence] == rois
    for item, rc, obs in zip(ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence):
        p = prior[item.ROIName]
        assert int(item.ROINumber) == p.number and int(rc.ReferencedROINumber) == p.number
        assert tuple(int(c) for c in rc.ROIDisplayColor) == p.color
        assert obs.RTROIInterpretedType == p.interpreted_type
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == target.dicom.frame_of_reference_uid
    ours = {s["name"]: imaging.read_mask(folder / s["files"]["mask"], target) for s in result["structures"]}
    theirs = plastimatch_masks(rs, followup, scratch, target)
    scores = {}
    if theirs:
        by_name = {name.replace(" ", "_"): m for name, m in theirs.items()}
        for s in result["structures"]:
            other = theirs.get(s["name"], by_name.get(s["name"].replace(" ", "_")))
            assert other is not None, (s["name"], sorted(theirs))
            scores[s["name"]] = dice(ours[s["name"]], other)
            assert scores[s["name"]] >= 0.99, (s["name"], scores)
    for seg_file in ("seg.dcm", "probability_seg.dcm"):
        assert dciodvfy_errors(folder / seg_file) == [], seg_file
    seg = hd.seg.segread(folder / "seg.dcm")
    assert [x.SegmentLabel for x in seg.SegmentSequence] == rois
    for number, name in enumerate(rois, start=1):
        assert np.array_equal(imaging.read_mask(folder / "seg.dcm", target, number), ours[name]) if ours[name].any() else True
    assert len(hd.seg.segread(folder / "probability_seg.dcm").SegmentSequence) == len(rois)
    labels = imaging.read_nifti_array(folder / "labels.nii.gz", target)
    assert set(np.unique(labels)) <= set(range(len(rois) + 1))
    return scores
