"""The one job function: `p2sam segment`, the job runner (p2sam.runner: the Celery task and the
embedded service) and bench.volumes call it.

    summary = run_job(spec, out_dir)   # spec: JobSpec; writes out_dir/<target>/...

Reads the prior and its contour, loads the model (once per process), then for every follow-up
runs ``followup.segment_followup`` and ``outputs.write_target``. Finished targets are skipped on
a re-run (each target folder appears atomically), so a retried or redelivered job continues
where it stopped and never writes a second set of outputs.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import imaging
import p2sam

from .followup import JobCancelled, segment_followup, segment_structures
from .modelpool import ModelPool, default_pool, sampler_config
from .outputs import target_done, write_target
from .records import JobSummary, TargetResult
from .qc import thresholds_from_card
from .settings import Settings, get_settings
from .spec import JobSpec, window_arg
from .structure_outputs import StructureResult, write_structures_target
from .structures import read_structures

log = logging.getLogger("p2sam.pipeline")

# progress(stage, fraction of the whole job in [0, 1], message)
ProgressFn = Callable[[str, float, str], None]

__all__ = ["JobCancelled", "run_job", "target_names"]


def target_names(spec: JobSpec) -> list[str]:
    """Output folder names: given names, else from the paths; made unique."""
    names, seen = [], set()
    for i, t in enumerate(spec.targets):
        base = t.name or _stem(t.path) or f"target{i + 1}"
        name, n = base, 2
        while name in seen:
            name, n = f"{base}-{n}", n + 1
        seen.add(name)
        names.append(name)
    return names


def _stem(path: str) -> str:
    name = Path(path.rstrip("/")).name
    for suffix in (".nii.gz", ".nii", ".zip", ".dcm", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".-")
    return name[:64]


def run_job(
    spec: JobSpec,
    out_dir: str | Path,
    pool: ModelPool | None = None,
    progress: ProgressFn | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    settings: Settings | None = None,
    on_model: Callable[[dict[str, Any]], None] | None = None,
) -> JobSummary:
    """Segment every target of ``spec``; returns the job summary (each target's TargetResult is
    also its result.json).

    Arguments:
      spec: the job (local paths: prior image + contour, targets, outputs, model, sampler, ...).
      out_dir: written as ``out_dir/<target name>/`` (result.json, rtstruct.dcm, seg.dcm,
        mask.nii.gz, ...), each folder appearing atomically; finished targets are skipped.
      pool: the process's ModelPool (default: p2sam.modelpool.default_pool()).
      progress: ``progress(stage, fraction of the whole job in [0, 1], message)``.
      is_cancelled: polled between steps; True stops the job with JobCancelled.
      settings: defaults for what the spec leaves unset (P2SAM_*; default get_settings()).
      on_model: told the model (name, backbone, sha256) as soon as it is loaded, so a job's
        status can show it while the job still runs.

    Returns:
      a :class:`p2sam.records.JobSummary`: provenance (model, method, engine, sampler, prior), one
      :class:`p2sam.records.TargetResult` per target (found, QC with volume_ml / area_mm2 and the
      review flag, flagged slices, warnings, files), seconds. Arrays never leave the files: masks
      are ``(z, y, x)`` on the target's grid, contours in DICOM patient coordinates (LPS, mm).
    """
    settings = settings or get_settings()
    pool = pool or default_pool()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda stage, fraction, message: None)
    t0 = time.perf_counter()

    report("reading", 0.0, "reading the prior")
    prior = imaging.read_image(spec.prior_image)
    structures = None
    if spec.rois is not None:  # several structures in one job: one RTSTRUCT / SEG per target
        structures, job_warnings = read_structures(spec.prior_mask, prior, spec.rois)
        prior_mask = np.stack([s.mask for s in structures])
        prior_info = {"digest": _digest(prior.array, prior_mask), "rois": [s.name for s in structures]}
    else:
        detail = imaging.read_mask_detail(spec.prior_mask, prior, _roi_arg(spec.roi))
        prior_mask = detail.mask
        if not prior_mask.any():
            raise imaging.EmptyRoiError(f"{Path(spec.prior_mask).name}: the prior contour is empty on its image")
        job_warnings = roi_warnings(spec.roi, detail.name)
        named = spec.roi is not None and not isinstance(_roi_arg(spec.roi), int)
        loose = named and spec.roi.strip().lower() == detail.name.strip().lower()
        roi_name = spec.roi_name_out or ((detail.name if loose else spec.roi) if named else "GTV")
        prior_info = {"digest": _digest(prior.array, prior_mask), "roi": roi_name, **_size(prior, prior_mask)}
    # Everything a user can get wrong is checked before the model is loaded or any target is
    # segmented: a bad second target path must not cost the first target's segmentation time.
    window = window_arg(spec.window or settings.window)
    check_targets(spec, prior)

    report("loading", 0.02, "loading the model")
    model_name = pool.resolve(spec.model, prior.is_rgb)
    loaded, engine = pool.get(model_name)
    n_samples = settings.n_samples if spec.n_samples is None else spec.n_samples
    sampler = sampler_config(loaded.card, spec.sampler, n_samples)
    qc_thresholds = thresholds_from_card(loaded.card, sampler.kind)
    provenance = {
        "software_version": p2sam.__version__,
        "model": {"name": model_name, "backbone": loaded.backbone, "sha256": loaded.sha256},
        "method": spec.method,
        "engine": _config_dict(engine.config),
        "sampler": {"kind": sampler.kind, "k": sampler.k},
        "prior": prior_info,
    }

    if on_model is not None:
        on_model(provenance["model"])
    names = target_names(spec)
    targets: list[TargetResult] = []
    n = len(spec.targets)
    for i, (target_spec, name) in enumerate(zip(spec.targets, names)):
        if is_cancelled is not None and is_cancelled():
            raise JobCancelled()
        start, span = 0.05 + 0.95 * i / n, 0.95 / n
        done = target_done(out_dir, name)
        if done is not None:
            log.info("target %d/%d already finished, skipped", i + 1, n)
            targets.append(done)
            continue
        report("reading", start, f"target {i + 1}/{n}: reading")
        target = imaging.read_image(target_spec.path)
        report("segmenting", start + 0.05 * span, f"target {i + 1}/{n}: segmenting")
        seg_args = {
            "method": spec.method, "window": window,
            "margin": settings.slice_margin if spec.slice_margin is None else spec.slice_margin,
            "sampler": sampler,
            "progress": lambda f, msg: report("segmenting", start + span * (0.05 + 0.85 * f), f"target {i + 1}/{n}: {msg}"),
            "is_cancelled": is_cancelled,
            "encode_batch_mb": settings.encode_batch_mb,
        }
        if structures is not None:
            results = segment_structures(prior, [s.mask for s in structures], target, engine, pool, model_name, **seg_args)
            items = [StructureResult(s, r, {"digest": prior_info["digest"], "roi": s.name, **_size(prior, s.mask)})
                     for s, r in zip(structures, results)]
            report("writing", start + 0.9 * span, f"target {i + 1}/{n}: writing results")
            targets.append(write_structures_target(out_dir, name, target, items, set(spec.outputs), provenance, window,
                                                   settings.min_island_mm2, qc_thresholds, warnings=job_warnings))
            continue
        result = segment_followup(prior, prior_mask, target, engine, pool, model_name, **seg_args)
        result.warnings[:0] = job_warnings
        report("writing", start + 0.9 * span, f"target {i + 1}/{n}: writing results")
        targets.append(write_target(out_dir, name, target, result, set(spec.outputs), roi_name, provenance, window, settings.min_island_mm2, qc_thresholds))
    report("done", 1.0, "finished")
    return JobSummary(**provenance, targets=targets, seconds=round(time.perf_counter() - t0, 3))


def roi_warnings(requested: str | None, matched: str) -> list[str]:
    """A warning when the ROI was found by a case-insensitive (or space-trimmed) name match."""
    if requested is None or requested.isdigit() or requested == matched:
        return []
    if requested.strip().lower() != matched.strip().lower():  # e.g. a PNG or NIfTI mask: no names
        return []
    return [(f"ROI '{requested}' matched the prior's ROI '{matched}' (names compared ignoring case); "
             f"the output ROI is named '{matched}'")]


def check_targets(spec: JobSpec, prior: imaging.Volume) -> None:
    """Every target path exists and is a kind of image we read (pictures: also the same kind of
    picture, RGB or grey, as the prior); raises ImagingError naming the target otherwise."""
    from imaging.sources import kind_of_file

    n = len(spec.targets)
    for i, t in enumerate(spec.targets):
        label = f"target {i + 1}/{n} ({t.path})"
        p = Path(t.path)
        if not p.exists():
            raise imaging.ImagingError(f"{label}: no such file or folder")
        if p.is_dir():
            if not any(f.is_file() for f in p.rglob("*")):
                raise imaging.ImagingError(f"{label}: the folder holds no files")
            continue
        kind = kind_of_file(p)
        if kind == "unknown":
            raise imaging.UnsupportedFileError(
                f"{label}: not a DICOM series/file, zip of DICOM files, NIfTI (.nii/.nii.gz), PNG or JPEG")
        if kind in ("png", "jpeg"):
            picture = imaging.read_image(p)
            if picture.is_rgb != prior.is_rgb:
                raise imaging.ImagingError(
                    f"{label}: is {'an RGB picture' if picture.is_rgb else 'a grey-level image'} but the prior is "
                    f"{'an RGB picture' if prior.is_rgb else 'a grey-level image'}: they must be the same kind of image")


def _digest(image: np.ndarray, mask: np.ndarray) -> str:
    """Short content digest of the prior (identifies it in reports without naming the patient)."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(image).tobytes() + np.packbits(mask).tobytes()).hexdigest()[:16]


def _size(volume: imaging.Volume, mask: np.ndarray) -> dict[str, float]:
    """The prior contour's volume (mL), or for a picture / single slice its area (mm^2)."""
    if volume.is_2d():
        return {"area_mm2": round(float(mask.sum() * volume.voxel_area_mm2()), 3)}
    return {"volume_ml": round(float(mask.sum() * np.prod(volume.spacing) / 1000.0), 4)}


def _roi_arg(roi: str | None) -> str | int | None:
    return int(roi) if roi is not None and roi.isascii() and roi.isdigit() else roi  # not "²": int() refuses it


def _config_dict(cfg) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice = 2TP / (2TP + FP + FN); two empty masks score 1."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)
