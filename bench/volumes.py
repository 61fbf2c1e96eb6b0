"""Volume benchmark on real anatomy (soft-tissue sarcoma CT and MR), run through the product's job.

    python -m bench.volumes --data ../shared/data/sts-ct-mr [--backbones ct_phantom,lite_medsam]
        [--weights FILE ...] [--protocols within,followup,mr_ct] [--methods direct,persam,fixed,p2sam,box,registered_box,location]
        [--patients STS_003,STS_005 | --max-patients N] [--max-slices N] [--json FILE]

Every number comes from ``p2sam.pipeline.run_job`` (the function the CLI, the worker and the
service run): inputs are written as files the product reads (DICOM series, RTSTRUCT, NIfTI),
the job's outputs are read back with ``imaging``. Three protocols, none of them a real
longitudinal pair with contours on both visits (none can be obtained here; docs/volumes.md):

1. ``within`` (within-scan adaptation, the single-scan analogue of the paper's 4D-Lung
   protocol): prior = the CT slice with the largest contour (one-slice DICOM + NIfTI mask);
   targets = every other tumour slice of the same CT plus ``EMPTY_BEYOND`` empty slices just
   beyond each end of the tumour, each a one-slice series (one job per patient and method).
   Dice per tumour slice -> patient mean; ``fp`` = fraction of the empty slices where
   anything was segmented.
2. ``followup`` (simulated follow-up on real anatomy): the CT warped by a seeded known
   deformation (documented in :func:`make_deformation`: rigid shift 5-15 mm in a random 3-D
   direction, rotation up to 3 degrees about each axis, a smooth elastic field of 2-4 mm at
   most, tumour shrinkage of 0-15 % by warping), written as a DICOM series in a new study and
   Frame of Reference; the prior is the original CT as a DICOM series + our RTSTRUCT. The job
   registers, segments and writes an RTSTRUCT; its 3-D Dice (rasterised back) against the
   warped truth is scored. Baseline ``registration only``: the prior contour carried by the
   job's own rigid registration (in result.json), i.e. what a planning system does without
   us. Registration error (mm, over the truth tumour voxels): against the known rigid part
   and against the full deformation.
3. ``mr_ct`` (cross-modality stress case): prior = the MR T1 (NIfTI) with its contour,
   target = the CT of the same patient (same world frame: the true transform is identity).
   Dice of the job's mask against the CT contour, registration-only baseline and error.

Methods: direct transfer (no prompt), PerSAM, P²SAM with a fixed number of parts (the model
card's lowest: 1 positive + 1 negative), P²SAM with retrieval (the product default), the
prior box, and two that use the job's registration (the engine's location setting,
P2SAM_LOCATION, on for that job only): ``registered_box`` (the prior contour carried onto each
follow-up slice by the registration, its box as SAM's box prompt; the prior box where the carried
contour misses the slice) and ``location`` (P²SAM + location: the registration-guided candidates
and selection rule of models/candidates.py). Backbones: any model name (`p2sam models`) or weights file.

CPU economy, without changing what is measured: the encoder runs once per slice for all
methods of a backbone (the engine's ``encode`` is memoised by image content within one
patient and protocol), and the rigid registration once per patient and protocol (memoised by
the input volumes: it is deterministic, seeded). ``--max-slices N`` crops every volume in z
to the N tumour slices around the largest contour plus margins, ``--patients`` /
``--max-patients`` bound the cohort; results are written to ``--json`` after every patient.

The LAST line is ``volumes_dice <mean 3-D Dice on protocol 2 of the product default>`` (method
p2sam with the model a CT job gets with model=auto, P2SAM_DEFAULT_MODEL_CT).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .common import log, table

PROTOCOLS = ("within", "followup", "mr_ct")
METHODS = ("direct", "persam", "fixed", "p2sam", "box", "registered_box", "location")
LABELS = {"direct": "direct", "persam": "PerSAM", "fixed": "P²SAM n=1", "p2sam": "P²SAM", "box": "prior box",
          "registered_box": "registered box", "location": "P²SAM + location"}
# bench methods that are a job method run with the engine's location setting on (P2SAM_LOCATION)
LOCATED = {"registered_box": "box", "location": "p2sam"}
EMPTY_BEYOND = 2  # protocol 1: empty slices scored beyond each end of the tumour
CROP_MARGIN = 6  # --max-slices: slices kept beyond the tumour slices (a 15 mm shift is ~4.6 slices)
SEED = 12


# ----------------------------------------------------------------------------- data
@dataclass
class Patient:
    name: str
    ct: object  # imaging.Volume
    ct_mask: np.ndarray
    mr: object
    mr_mask: np.ndarray


def patient_folders(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.is_dir() and (p / "CT_image.nii.gz").is_file())


def crop_z(volume, z0: int, z1: int):
    """Slices [z0, z1) of a Volume (geometry kept exact)."""
    from imaging import Volume

    z0, z1 = max(0, z0), min(volume.shape[0], z1)
    return Volume(array=volume.array[z0:z1].copy(), origin=volume.index_to_world(np.array([z0, 0, 0])),
                  spacing=volume.spacing, direction=volume.direction, modality=volume.modality, source=volume.source)


def load_patient(folder: Path, max_slices: int | None) -> Patient:
    import imaging
    from imaging.nifti import read_nifti

    ct, mr = read_nifti(folder / "CT_image.nii.gz"), read_nifti(folder / "MR_T1_image.nii.gz")
    ct_mask = imaging.read_mask(folder / "CT_mask.nii.gz", ct)
    mr_mask = imaging.read_mask(folder / "MR_T1_mask.nii.gz", mr)
    if max_slices:
        zs = np.flatnonzero(ct_mask.any(axis=(1, 2)))
        areas = ct_mask.sum(axis=(1, 2))
        big = int(np.argmax(areas))
        keep = zs[np.argsort(np.abs(zs - big), kind="stable")[:max_slices]]
        z0, z1 = int(keep.min()) - CROP_MARGIN, int(keep.max()) + 1 + CROP_MARGIN
        z0c, z1c = max(0, z0), min(ct.shape[0], z1)
        lo, hi = ct.index_to_world(np.array([[z0c, 0, 0], [z1c - 1, 0, 0]]))[:, 2]
        ct_mask = ct_mask[z0c:z1c].copy()
        ct_mask[: max(0, int(keep.min()) - z0c)] = False  # only the kept tumour slices count
        ct_mask[int(keep.max()) + 1 - z0c:] = False
        ct = crop_z(ct, z0c, z1c)
        mz = mr.world_to_index(np.array([[0, 0, lo], [0, 0, hi]]) + np.array([mr.origin[0], mr.origin[1], 0]))[:, 0]
        m0, m1 = int(np.floor(min(mz))), int(np.ceil(max(mz))) + 1
        m0c, m1c = max(0, m0), min(mr.shape[0], m1)
        mr_mask = mr_mask[m0c:m1c].copy()
        # the same kept tumour extent in world z on the MR (slices outside it cleared)
        mr_z = mr.index_to_world(np.stack([np.arange(m0c, m1c), np.zeros(m1c - m0c), np.zeros(m1c - m0c)], 1))[:, 2]
        kz = ct.index_to_world(np.array([[keep.min() - z0c, 0, 0], [keep.max() - z0c, 0, 0]]))[:, 2]
        tol = 0.5 * ct.spacing[2]
        mr_mask[(mr_z < kz.min() - tol) | (mr_z > kz.max() + tol)] = False
        mr = crop_z(mr, m0c, m1c)
    return Patient(folder.name, ct, ct_mask, mr, mr_mask)


# ----------------------------------------------------------------------------- deformation
@dataclass
class Deformation:
    """Target LPS point x -> prior LPS point: phi(x) = psi(R (x - c) + c + t + u(x)), where R
    rotates by ``angles_deg`` (Euler3D, about x, y, z) about the volume centre c, t =
    ``shift_mm``, u is a smooth random field of at most ``elastic_mm`` (cubic upsampling of
    N(0,1) values on a ~40 mm grid), and psi(y) = y + s (y - m) exp(-|y - m|^2 / 2 sigma^2)
    with s = ``shrink`` (sampling further from the tumour centroid m: the tumour shrinks by
    about s) and sigma = 1.5 x the tumour's equivalent-sphere radius."""

    seed: int
    angles_deg: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    elastic_mm: float
    shrink: float
    centre: tuple[float, float, float]
    tumour_centre: tuple[float, float, float]
    sigma_mm: float


def make_deformation(ct, mask: np.ndarray, seed: int) -> Deformation:
    rng = np.random.default_rng(seed)
    angles = tuple(float(a) for a in rng.uniform(-3.0, 3.0, 3))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    shift = tuple(float(v) for v in direction * rng.uniform(5.0, 15.0))
    centre = ct.index_to_world((np.array(ct.shape) - 1) / 2.0)
    idx = np.argwhere(mask)
    tumour = ct.index_to_world(idx.mean(axis=0))
    radius = (3 * mask.sum() * float(np.prod(ct.spacing)) / (4 * np.pi)) ** (1 / 3)
    return Deformation(seed, angles, shift, float(rng.uniform(2.0, 4.0)), float(rng.uniform(0.0, 0.15)),
                       tuple(float(v) for v in centre), tuple(float(v) for v in tumour), float(1.5 * radius))


def _rigid(d: Deformation):
    import SimpleITK as sitk

    t = sitk.Euler3DTransform()
    t.SetCenter(d.centre)
    t.SetRotation(*np.radians(d.angles_deg))
    t.SetTranslation(d.shift_mm)
    return t


def _apply_rigid(t, points: np.ndarray) -> np.ndarray:
    m = np.array(t.GetMatrix()).reshape(3, 3)
    c, tr = np.array(t.GetCenter()), np.array(t.GetTranslation())
    return (points - c) @ m.T + c + tr


def deformation_points(d: Deformation, ct) -> tuple[np.ndarray, np.ndarray]:
    """(phi(x), rigid part of phi(x)) for every voxel centre x of ``ct``'s grid, (z, y, x, 3) LPS."""
    from scipy import ndimage

    nz, ny, nx = ct.shape
    grid = np.stack(np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij"), axis=-1).astype(np.float64)
    world = ct.index_to_world(grid.reshape(-1, 3))
    rigid = _apply_rigid(_rigid(d), world)
    rng = np.random.default_rng(d.seed + 1)
    extent = np.array(ct.shape) * ct.spacing[::-1]
    coarse = np.maximum(2, np.ceil(extent / 40.0).astype(int) + 1)
    field = np.stack([ndimage.zoom(rng.normal(size=coarse), np.array(ct.shape) / coarse, order=3, mode="nearest")[:nz, :ny, :nx]
                      for _ in range(3)], axis=-1).reshape(-1, 3)
    field *= d.elastic_mm / max(1e-6, float(np.linalg.norm(field, axis=1).max()))
    y = rigid + field
    rel = y - np.array(d.tumour_centre)
    weight = np.exp(-(rel * rel).sum(axis=1) / (2 * d.sigma_mm ** 2))
    phi = y + d.shrink * rel * weight[:, None]
    return phi.reshape(nz, ny, nx, 3), rigid.reshape(nz, ny, nx, 3)


def warp(ct, mask: np.ndarray, phi: np.ndarray):
    """The follow-up image (on ct's grid) and its truth mask: prior sampled at phi(x)."""
    from scipy import ndimage

    coords = ct.world_to_index(phi.reshape(-1, 3)).T
    image = ndimage.map_coordinates(ct.array.astype(np.float32), coords, order=1, cval=-1000.0).reshape(ct.shape)
    truth = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, cval=0.0).reshape(ct.shape) >= 0.5
    return ct.with_array(image.astype(np.float32), modality="CT"), truth


def registration_error(transform_json: dict, target, truth: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean and max distance (mm) between the job's rigid transform and ``reference`` ((z, y, x, 3)
    true prior points) over the truth's voxels."""
    from imaging.registration import transform_from_dict

    t = transform_from_dict(transform_json)
    idx = np.argwhere(truth)
    est = _apply_rigid(t, target.index_to_world(idx.astype(float)))
    err = np.linalg.norm(est - reference[tuple(idx.T)], axis=1)
    return float(err.mean()), float(err.max())


def carried_by_registration(transform_json: dict, prior, prior_mask: np.ndarray, target) -> np.ndarray:
    """The prior contour mapped onto the target by the job's rigid registration alone."""
    import imaging
    from imaging.registration import transform_from_dict

    reg = imaging.Registration(prior, target, transform_from_dict(transform_json), "rigid_registration")
    return reg.map_mask(prior_mask)


# ----------------------------------------------------------------------------- the job, memoised
def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


class Memo:
    """Encoder outputs and registrations reused across the methods of one patient/protocol."""

    def __init__(self) -> None:
        self.encodings: dict[str, object] = {}
        self.registrations: dict[str, object] = {}
        self.hits = self.misses = 0

    def clear(self) -> None:
        self.encodings.clear()
        self.registrations.clear()


def make_pool(memo: Memo, settings):
    """A ModelPool whose engines memoise ``encode`` by image content (same result, computed once)."""
    from models import P2SAMEngine
    from p2sam.modelpool import ModelPool

    class MemoEngine(P2SAMEngine):
        def encode(self, image):
            arr = np.ascontiguousarray(image)
            key = f"{id(self.sam)}-{arr.shape}-" + hashlib.sha1(arr.tobytes()).hexdigest()
            if key not in memo.encodings:
                memo.misses += 1
                memo.encodings[key] = super().encode(image)
            else:
                memo.hits += 1
            return memo.encodings[key]

    class BenchPool(ModelPool):
        """``located`` True: the same model's engine with the location setting on (one encoder memo)."""

        located = False

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._located: dict = {}

        def get(self, name):
            with self._lock:
                if name not in self._models:
                    loaded, engine = super().get(name)
                    plain = MemoEngine(loaded.sam, engine.config)
                    self._models[name] = (loaded, plain)
                    self._located[name] = (loaded, MemoEngine(loaded.sam, dataclasses.replace(plain.config, location=True)))
                return self._located[name] if self.located else self._models[name]

    return BenchPool(settings)


def memoise_registration(memo: Memo) -> None:
    import imaging

    original = imaging.register_rigid

    def key_of(v) -> str:
        h = hashlib.sha1(np.ascontiguousarray(v.array).tobytes())
        h.update(np.concatenate([v.origin, v.spacing, v.direction.ravel()]).tobytes())
        h.update(v.modality.encode())
        return h.hexdigest()

    def register_rigid(prior, followup, **kw):
        key = key_of(prior) + key_of(followup) + json.dumps(kw, sort_keys=True)
        if key not in memo.registrations:
            memo.registrations[key] = original(prior, followup, **kw)
        return memo.registrations[key]

    register_rigid.__wrapped__ = original  # type: ignore[attr-defined]
    imaging.register_rigid = register_rigid


def job(pool, prior_image, prior_mask, targets: list[tuple[str, str]], out: Path, model: str, method: str,
        outputs: list[str]) -> dict:
    from p2sam.pipeline import run_job
    from p2sam.spec import JobSpec, TargetSpec

    spec = JobSpec(prior_image=str(prior_image), prior_mask=str(prior_mask), roi=None,
                   targets=[TargetSpec(path=p, name=n) for n, p in targets], outputs=outputs, model=model,
                   method=LOCATED.get(method, method), n_samples=0, sampler="none", roi_name_out="GTV")
    pool.located = method in LOCATED
    try:
        return run_job(spec, out, pool=pool)
    finally:
        pool.located = False


def run_methods(label: str, pool, backbones, methods, work: Path, prior_image, prior_mask, target: tuple[str, Path],
                output: str, image, truth: np.ndarray) -> tuple[dict, dict]:
    """One job per backbone x method on a single target; Dice of its ``output`` ("rtstruct" or
    "nifti") against ``truth`` on ``image``'s grid, and the registration the last job recorded."""
    name, path = target
    artifact = "rtstruct.dcm" if output == "rtstruct" else "mask.nii.gz"
    out, registration = {}, None
    for model in backbones:
        res = {}
        for method in methods:
            dest = work / "out" / _model_dir(model) / method
            t0 = time.perf_counter()
            job(pool, prior_image, prior_mask, [(name, str(path))], dest, model, method, [output])
            pred = read_prediction(dest / name / artifact, image)
            registration = json.loads((dest / name / "result.json").read_text())["registration"]
            res[method] = {"dice": dice(pred, truth), "seconds": round(time.perf_counter() - t0, 1)}
            log(f"  {label} {model} {method}: dice {res[method]['dice']:.3f} ({res[method]['seconds']} s)")
        out[model] = res
    return out, registration


def read_prediction(path: Path, image) -> np.ndarray:
    """The job's mask (NIfTI or RTSTRUCT) on ``image``'s grid; an empty result is all False."""
    import imaging

    if path.name.endswith(".nii.gz"):
        return np.asarray(imaging.read_nifti_array(path, image)).reshape(image.shape) != 0
    try:
        return imaging.read_mask(path, image)
    except imaging.EmptyRoiError:  # the job found nothing: an ROI without contours
        return np.zeros(image.shape, bool)


def _model_dir(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(model).stem)


# ----------------------------------------------------------------------------- protocols
def protocol_within(p: Patient, work: Path, pool, backbones, methods) -> dict:
    import imaging

    ct, mask = p.ct, p.ct_mask
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    prior_z = int(np.argmax(mask.sum(axis=(1, 2))))
    empty = [z for z in list(range(zs.min() - EMPTY_BEYOND, zs.min())) + list(range(zs.max() + 1, zs.max() + 1 + EMPTY_BEYOND))
             if 0 <= z < ct.shape[0]]
    scored = [int(z) for z in zs if z != prior_z] + empty
    series = {}
    for z in [prior_z] + scored:
        series[z] = imaging.write_dicom_series(crop_z(ct, z, z + 1), work / "slices" / f"z{z:03d}",
                                               patient={"PatientID": p.name, "PatientName": p.name},
                                               study={"StudyInstanceUID": imaging.dicom_common.new_uid(f"{p.name}-study")},
                                               frame_of_reference_uid=imaging.dicom_common.new_uid(f"{p.name}-for"),
                                               uid_entropy=f"{p.name}-slice{z}")
    prior_mask_path = imaging.write_nifti(mask[prior_z:prior_z + 1], series[prior_z], work / "prior_mask.nii.gz")
    out = {}
    for model in backbones:
        res = {}
        for method in methods:
            dest = work / "out" / _model_dir(model) / method
            t0 = time.perf_counter()
            job(pool, work / "slices" / f"z{prior_z:03d}", prior_mask_path,
                [(f"z{z:03d}", str(work / "slices" / f"z{z:03d}")) for z in scored], dest, model, method, ["nifti"])
            dices, fps = [], []
            for z in scored:
                pred = read_prediction(dest / f"z{z:03d}" / "mask.nii.gz", series[z])[0]
                if mask[z].any():
                    dices.append(dice(pred, mask[z]))
                else:
                    fps.append(float(pred.any()))
            res[method] = {"dice": float(np.mean(dices)), "fp": float(np.mean(fps)) if fps else None,
                           "n_slices": len(dices), "n_empty": len(fps), "seconds": round(time.perf_counter() - t0, 1)}
            log(f"  within {p.name} {model} {method}: dice {res[method]['dice']:.3f} fp {res[method]['fp']} "
                f"({res[method]['seconds']} s)")
        out[model] = res
    return {"methods": out, "prior_z": prior_z}


def patient_seed(name: str, seed: int = SEED) -> int:
    """Protocol 2's deformation seed of a patient folder (``seed`` x 1000 + the folder's number)."""
    return seed * 1000 + int(re.sub(r"\D", "", name) or 0)


def simulated_followup(p: Patient, seed: int):
    """Protocol 2's follow-up of ``p``: (deformation, phi, its rigid part, follow-up CT, truth mask)."""
    d = make_deformation(p.ct, p.ct_mask, seed)
    phi, rigid = deformation_points(d, p.ct)
    fu, truth = warp(p.ct, p.ct_mask, phi)
    return d, phi, rigid, fu, truth


def protocol_followup(p: Patient, work: Path, pool, backbones, methods, seed: int) -> dict:
    import imaging

    ct, mask = p.ct, p.ct_mask
    d, phi, rigid, fu, truth = simulated_followup(p, seed)
    patient = {"PatientID": p.name, "PatientName": p.name}
    prior = imaging.write_dicom_series(ct, work / "prior", patient=patient, series_description="prior CT",
                                       uid_entropy=f"{p.name}-prior")
    rs = imaging.write_rtstruct(mask, prior, work / "prior_rtstruct.dcm", roi_name="GTV", min_island_area_mm2=0,
                                uid_entropy=f"{p.name}-prior-rs")
    target = imaging.write_dicom_series(fu, work / "followup", patient=patient, series_description="simulated follow-up",
                                        uid_entropy=f"{p.name}-followup-{seed}")
    truth_w = truth  # the written series keeps the grid
    out, registration = run_methods(f"followup {p.name}", pool, backbones, methods, work, work / "prior", rs,
                                    ("followup", work / "followup"), "rtstruct", target, truth_w)
    baseline = carried_by_registration(registration["transform"], prior, mask, target)
    err_rigid = registration_error(registration["transform"], target, truth, rigid)
    err_full = registration_error(registration["transform"], target, truth, phi)
    return {"methods": out, "registration_only": dice(baseline, truth), "identity": dice(mask, truth),
            "registration": {k: registration.get(k) for k in ("method", "quality", "ncc_before", "ncc_after", "metric_value",
                                                              "translation_mm", "rotation_deg")},
            "error_rigid_mm": {"mean": err_rigid[0], "max": err_rigid[1]},
            "error_full_mm": {"mean": err_full[0], "max": err_full[1]},
            "deformation": asdict(d)}


def protocol_mr_ct(p: Patient, work: Path, pool, backbones, methods) -> dict:
    import imaging

    mr_path = imaging.write_nifti(p.mr.array.astype(np.float32), p.mr, work / "mr.nii.gz")
    mr_mask_path = imaging.write_nifti(p.mr_mask, p.mr, work / "mr_mask.nii.gz")
    ct_path = imaging.write_nifti(p.ct.array.astype(np.float32), p.ct, work / "ct.nii.gz")
    target = imaging.read_image(ct_path)
    out, registration = run_methods(f"mr_ct {p.name}", pool, backbones, methods, work, mr_path, mr_mask_path,
                                    ("ct", ct_path), "nifti", target, p.ct_mask)
    prior = imaging.read_image(mr_path)
    baseline = carried_by_registration(registration["transform"], prior, p.mr_mask, target)
    identity = np.broadcast_to(target.index_to_world(np.argwhere(np.ones(target.shape, bool)).astype(float)).reshape(*target.shape, 3),
                               (*target.shape, 3))
    err = registration_error(registration["transform"], target, p.ct_mask, identity)
    return {"methods": out, "registration_only": dice(baseline, p.ct_mask),
            "registration": {k: registration.get(k) for k in ("method", "quality", "ncc_before", "ncc_after", "metric_value",
                                                              "mi_before", "mi_after", "translation_mm", "rotation_deg", "cross_modality")},
            "error_rigid_mm": {"mean": err[0], "max": err[1]}}


# ----------------------------------------------------------------------------- report
def summarise(results: dict, protocols, backbones, methods) -> dict:
    """Means over patients per protocol / backbone / method (+ baselines, errors)."""
    means: dict = {}
    for proto in protocols:
        rows = [(name, r[proto]) for name, r in results.items() if proto in r]
        if not rows:
            continue
        m: dict = {"n_patients": len(rows), "methods": {}}
        for model in backbones:
            m["methods"][model] = {}
            for method in methods:
                vals = [r["methods"][model][method]["dice"] for _, r in rows]
                m["methods"][model][method] = float(np.mean(vals))
                if proto == "within":
                    fps = [r["methods"][model][method]["fp"] for _, r in rows if r["methods"][model][method]["fp"] is not None]
                    m["methods"][model][f"{method}_fp"] = float(np.mean(fps)) if fps else None
        if proto != "within":
            m["registration_only"] = float(np.mean([r["registration_only"] for _, r in rows]))
            m["error_rigid_mm"] = {"mean": float(np.mean([r["error_rigid_mm"]["mean"] for _, r in rows])),
                                   "max": float(np.max([r["error_rigid_mm"]["max"] for _, r in rows]))}
            if proto == "followup":
                m["error_full_mm"] = {"mean": float(np.mean([r["error_full_mm"]["mean"] for _, r in rows])),
                                      "max": float(np.max([r["error_full_mm"]["max"] for _, r in rows]))}
                m["identity"] = float(np.mean([r["identity"] for _, r in rows]))
        means[proto] = m
    return means


TITLES = {"within": "protocol 1, within-scan adaptation (prior = largest tumour slice; Dice per slice -> patient)",
          "followup": "protocol 2, simulated follow-up on real CT (3-D Dice of the job's RTSTRUCT vs the warped truth)",
          "mr_ct": "protocol 3, MR T1 prior -> CT target (3-D Dice vs the CT contour)"}


def print_tables(results: dict, means: dict, protocols, backbones, methods) -> None:
    for proto in protocols:
        if proto not in means:
            continue
        for model in backbones:
            header = ["patient"] + [LABELS[m] for m in methods]
            if proto == "within":
                header += ["FP rate (P²SAM)"] if "p2sam" in methods else []
            else:
                header += ["registration only", "reg. error mean/max mm"]
            rows = []
            for name, r in results.items():
                if proto not in r:
                    continue
                rr = r[proto]
                row = [name] + [rr["methods"][model][m]["dice"] for m in methods]
                if proto == "within":
                    row += [rr["methods"][model]["p2sam"]["fp"]] if "p2sam" in methods else []
                else:
                    e = rr["error_rigid_mm"]
                    row += [rr["registration_only"], f"{e['mean']:.1f} / {e['max']:.1f}"]
                rows.append(row)
            mm = means[proto]
            row = ["mean"] + [mm["methods"][model][m] for m in methods]
            if proto == "within":
                row += [mm["methods"][model].get("p2sam_fp")] if "p2sam" in methods else []
            else:
                e = mm["error_rigid_mm"]
                row += [mm["registration_only"], f"{e['mean']:.1f} / {e['max']:.1f}"]
            rows.append(row)
            print(f"\n{TITLES[proto]}; model {model}")
            print(table(header, [[("-" if v is None else v) for v in r] for r in rows]))
        if proto == "followup":
            e = means[proto]["error_full_mm"]
            print(f"registration error against the full known deformation (rigid + elastic + shrinkage): "
                  f"mean {e['mean']:.2f} mm, max {e['max']:.2f} mm; no registration (identity): Dice {means[proto]['identity']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.volumes", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/sts-ct-mr")
    parser.add_argument("--backbones", default="ct_phantom,lite_medsam", help="comma-separated model names or files")
    parser.add_argument("--weights", nargs="*", default=[], help="more models (e.g. adapted weights files)")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--patients", default="", help="comma-separated patient folder names (default: all)")
    parser.add_argument("--max-patients", type=int, default=0)
    parser.add_argument("--max-slices", type=int, default=0, help="crop to N tumour slices per patient (0: all)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--work", default=None, help="keep the written inputs and job outputs here")
    args = parser.parse_args(argv)

    data = Path(args.data)
    if not data.is_dir() or not patient_folders(data):
        print(f"skipped: no patient folders with CT_image.nii.gz under {data} (see ../shared/data/README.md)")
        return 0
    import torch

    from p2sam.settings import get_settings

    torch.set_num_threads(max(1, args.threads))
    protocols = [p for p in args.protocols.split(",") if p]
    methods = [m for m in args.methods.split(",") if m]
    backbones = [b for b in args.backbones.split(",") if b] + list(args.weights)
    bad = [p for p in protocols if p not in PROTOCOLS] + [m for m in methods if m not in METHODS]
    if bad:
        parser.error(f"unknown protocol/method {bad}; protocols {PROTOCOLS}, methods {METHODS}")
    folders = patient_folders(data)
    if args.patients:
        wanted = set(args.patients.split(","))
        folders = [f for f in folders if f.name in wanted]
    if args.max_patients:
        folders = folders[: args.max_patients]
    settings = get_settings()
    memo = Memo()
    memoise_registration(memo)
    pool = make_pool(memo, settings)
    default_model = settings.default_model_ct
    results: dict = {}
    config = {"data": str(data), "backbones": backbones, "protocols": protocols, "methods": methods,
              "max_slices": args.max_slices, "seed": args.seed, "default_model": default_model}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-volumes-") as tmp:
        root = Path(args.work) if args.work else Path(tmp)
        for folder in folders:
            p = load_patient(folder, args.max_slices or None)
            log(f"{p.name}: CT {p.ct.shape}, tumour slices {int(p.ct_mask.any(axis=(1, 2)).sum())}, MR {p.mr.shape}")
            results[p.name] = {}
            for proto in protocols:
                work = root / p.name / proto
                work.mkdir(parents=True, exist_ok=True)
                if proto == "within":
                    results[p.name][proto] = protocol_within(p, work, pool, backbones, methods)
                elif proto == "followup":
                    results[p.name][proto] = protocol_followup(p, work, pool, backbones, methods, patient_seed(p.name, args.seed))
                else:
                    results[p.name][proto] = protocol_mr_ct(p, work, pool, backbones, methods)
                memo.clear()
            if args.json:
                Path(args.json).write_text(json.dumps({"config": config, "partial": True,
                                                       "means": summarise(results, protocols, backbones, methods),
                                                       "patients": results}, indent=1))
    means = summarise(results, protocols, backbones, methods)
    seconds = time.perf_counter() - t_start
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config, "partial": False, "seconds": round(seconds, 1),
                                               "means": means, "patients": results}, indent=1))
    print(f"bench.volumes: {len(results)} patients from {data}, max slices {args.max_slices or 'all'}, "
          f"seed {args.seed}, {seconds:.0f} s")
    print_tables(results, means, protocols, backbones, methods)
    followup = means.get("followup", {}).get("methods", {})
    model = default_model if default_model in followup else (backbones[0] if followup else None)
    value = followup[model]["p2sam"] if model and "p2sam" in followup.get(model, {}) else float("nan")
    if model != default_model:
        print(f"(the product default model {default_model} was not run; volumes_dice is P²SAM with {model})")
    print(f"volumes_dice {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
