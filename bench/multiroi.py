"""N structures in one multi-ROI job vs N single-ROI jobs on the same follow-up (issue 18).

    python -m bench.multiroi [--structures 4] [--slices 60] [--model ct_phantom] [--samples 0]

Case: the real IBSI-1 lung CT (../shared/data/dicom/ibsi1-lung-ct, 60 slices) with a structure
set of up to four ROIs: the vendor's GTV-1 and three drawn from the real CT by threshold (BODY:
the filled largest region above -500 HU per slice; Lungs: below -500 HU inside it; Bone: above
250 HU inside it). The follow-up is a copy of the series shifted by a few pixels (a new series in
a new Frame of Reference). Every job gets a fresh model pool (the model loaded before the clock
starts, no prior cached), so the single-ROI jobs do what N separate requests would do: register,
encode the follow-up and the prior slices, each time.

Prints each job's seconds, the multi-ROI job's decode seconds per structure (the encoder ran once
per slice for all of them), and ends with ``multiroi_ratio X`` = seconds of the one N-structure
job / seconds of the N single-ROI jobs (below 1: cheaper).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import imaging
from p2sam.modelpool import ModelPool
from p2sam.pipeline import run_job
from p2sam.settings import get_settings
from p2sam.spec import JobSpec, TargetSpec

def _data() -> Path:
    """P2SAM_SHARED_DATA, else ../shared/data beside the checkout, else the workplace's copy."""
    if os.environ.get("P2SAM_SHARED_DATA"):
        return Path(os.environ["P2SAM_SHARED_DATA"])
    here = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return here if here.is_dir() else Path("/work/shared/data")


SHIFT = (5, -4)  # rows, columns: the follow-up's in-plane shift


def shifted_copy(prior: imaging.Volume, out: Path, entropy: str) -> imaging.Volume:
    """The prior series shifted by SHIFT pixels (air fills the gap), as a new series in a new FoR."""
    dy, dx = SHIFT
    array = np.full_like(prior.array, -1000)
    h, w = prior.shape[1:]
    array[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        prior.array[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    patient = {k: prior.dicom.patient_study.get(k) for k in ("PatientID", "PatientName")}
    return imaging.write_dicom_series(prior.with_array(array), out, patient, series_description="shifted copy",
                                      frame_of_reference_uid=imaging.dicom_common.new_uid(f"{entropy}-for"),
                                      uid_entropy=entropy)


def lung_case(data: Path, out: Path, n_slices: int) -> tuple[Path, Path, Path, list[str]]:
    """(prior folder, structure set, follow-up folder, ROI names) of the lung case (first n slices
    around the tumour)."""
    from scipy import ndimage

    src = data / "dicom" / "ibsi1-lung-ct"
    full = imaging.read_image(src / "ct")
    gtv_full = imaging.read_mask(src / "RS_GTV.dcm", full, "GTV-1")
    zs = np.flatnonzero(gtv_full.any(axis=(1, 2)))
    mid = int(zs.mean())
    lo = max(0, min(full.shape[0] - n_slices, mid - n_slices // 2))
    keep = slice(lo, lo + n_slices)
    sub = replace(full, array=full.array[keep], origin=full.index_to_world(np.array([[lo, 0, 0]]))[0], dicom=None)
    prior = imaging.write_dicom_series(sub, out / "prior", {k: full.dicom.patient_study.get(k) for k in ("PatientID", "PatientName")},
                                       series_description="lung CT", uid_entropy="bench-multiroi-prior")
    hu = prior.array
    body = np.zeros(hu.shape, bool)
    for k in range(hu.shape[0]):
        labels, n = ndimage.label(hu[k] > -500)
        if n:
            body[k] = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(ndimage.sum(np.ones_like(hu[k]), labels, range(1, n + 1)))))
    rois = [imaging.RoiSpec(gtv_full[keep], "GTV-1", (255, 0, 0), "GTV", number=1),
            imaging.RoiSpec(body, "BODY", (0, 255, 0), "EXTERNAL", number=2),
            imaging.RoiSpec(body & (hu < -500), "Lungs", (0, 160, 255), "ORGAN", number=3),
            imaging.RoiSpec(body & (hu > 250), "Bone", (255, 255, 0), "ORGAN", number=4)]
    rs = imaging.write_rtstruct_rois(rois, prior, out / "prior_rs.dcm", min_island_area_mm2=0,
                                     generation_algorithm="MANUAL", algorithm_name="bench.multiroi")
    shifted_copy(prior, out / "followup", "bench-multiroi-followup")
    return out / "prior", rs, out / "followup", [r.name for r in rois if r.mask.any()]


def timed_job(spec: JobSpec, out: Path) -> tuple[float, dict]:
    settings = get_settings()
    pool = ModelPool(settings)
    pool.get(pool.resolve(spec.model, False))  # loading is not what is compared
    t0 = time.perf_counter()
    summary = run_job(spec, out, pool=pool, settings=settings)
    return time.perf_counter() - t0, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--structures", type=int, default=4, help="how many structures (1-4)")
    ap.add_argument("--slices", type=int, default=60, help="follow-up slices (at most 60)")
    ap.add_argument("--model", default="ct_phantom")
    ap.add_argument("--samples", type=int, default=0)
    ap.add_argument("--data", type=Path, default=_data())
    ap.add_argument("--out", type=Path, default=None, help="keep the results here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if not (args.data / "dicom" / "ibsi1-lung-ct").is_dir():
        print(f"real data not available: {args.data / 'dicom' / 'ibsi1-lung-ct'} (see ../shared/data/README.md)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        prior, rs, followup, names = lung_case(args.data, out / "case", min(args.slices, 60))
        names = names[: max(1, min(args.structures, len(names)))]
        common = {"prior_image": str(prior), "prior_mask": str(rs), "targets": [TargetSpec(path=str(followup), name="followup")],
                  "model": args.model, "n_samples": args.samples, "sampler": "prompt_noise" if args.samples else "none",
                  "outputs": ["rtstruct", "nifti"]}
        singles = []
        for name in names:
            seconds, _ = timed_job(JobSpec(roi=name, **common), out / f"single_{name}")
            slices = len(json.loads((out / f"single_{name}" / "followup" / "result.json").read_text())["slices"])
            singles.append(seconds)
            print(f"single-ROI job {name:<8} {seconds:8.2f} s  ({slices} slices segmented)")
        seconds, _ = timed_job(JobSpec(rois=names, **common), out / "multi")
        result = json.loads((out / "multi" / "followup" / "result.json").read_text())
        t = result["timings_s"]
        print(f"multi-ROI job ({len(names)} structures) {seconds:8.2f} s  (registration {t['registration']:.2f} s, "
              f"follow-up encoder {t['encode_followup']:.2f} s once for all; prior slices {t['encode_prior']:.2f} s = "
              "encoder once per slice + part clustering per structure)")
        for name, decode in zip(names, t["decode_per_structure"]):
            print(f"  {name:<8} decode {decode:8.2f} s")
        if len(names) > 1:
            extra = (seconds - singles[0]) / (len(names) - 1)
            print(f"each structure after the first costs {extra:.2f} s = {extra / singles[0]:.2f} x a one-ROI job")
        print(f"follow-up slices {imaging.read_image(followup).shape[0]}, model {args.model}, samples {args.samples}")
        print(f"multiroi_ratio {seconds / sum(singles):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
