"""Longitudinal batches: many patients x visits, resumable, with a per-batch report.

A manifest lists, per patient, the prior (image + contour) and the visits in order, each
optionally with a ground-truth mask. Every patient becomes one job per visit (``run_job`` with a
single target) written under ``<out>/<patient>/``; a visit whose folder is complete is skipped
on a re-run, a half-written one is redone, so an interrupted batch resumes where it stopped.
``chain=True`` uses each visit's result as the prior of the next visit (the first visit's
prior otherwise).

Manifest formats:
- JSON: ``{"patients": [{"id": "p1", "prior": {"image": ..., "mask": ..., "roi": ...},
  "visits": [{"image": ..., "truth": ..., "name": ...}, ...]}], "defaults": {JobSpec fields}}``;
  ``"rois": [...]`` or ``"all"`` instead of ``roi``: every structure in one job per visit.
- CSV: columns ``patient, role (prior|visit), image, mask, roi, rois, truth, name``; rows in visit
  order; ``rois``: names separated by ``;``, or ``all``.
  A multi-ROI visit reports found / volume / review over its structures (result.json has each);
  its ``truth`` is not scored (one truth mask cannot say which structure it is), and a chained
  multi-ROI patient carries the visit's RTSTRUCT with ``rois: all`` (the structures found).
- ``sequences_manifest(folder)``: a CVC-ClinicDB-style folder (``seqNN/<n>.png`` + ``<n>_mask.png``):
  sequence = patient, frame = visit, the 3rd frame is the prior, frames 1-3 are not scored.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

import imaging

from .pipeline import JobCancelled, dice, run_job
from .records import TargetResult
from .spec import JobSpec, TargetSpec, check_rois


class PriorEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str
    mask: str
    roi: str | None = None
    rois: list[str] | Literal["all"] | None = None

    @field_validator("rois")
    @classmethod
    def _rois(cls, v):
        return check_rois(v)


class VisitEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str
    truth: str | None = None
    name: str | None = None


class PatientEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    prior: PriorEntry
    visits: list[VisitEntry] = Field(min_length=1)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patients: list[PatientEntry] = Field(min_length=1)
    defaults: dict[str, Any] = Field(default_factory=dict, description="JobSpec fields for every job (model, method, n_samples, ...)")


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _from_csv(path)
    return Manifest.model_validate_json(path.read_text())


def _from_csv(path: Path) -> Manifest:
    patients: dict[str, dict[str, Any]] = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            pid, role = (row.get("patient") or "").strip(), (row.get("role") or "visit").strip().lower()
            if not pid:
                raise ValueError(f"{path.name} line {n}: empty patient")
            entry = patients.setdefault(pid, {"id": pid, "visits": []})
            if role == "prior":
                entry["prior"] = {"image": row["image"], "mask": row.get("mask") or "", "roi": row.get("roi") or None,
                                  "rois": _csv_rois(row.get("rois"))}
            elif role == "visit":
                entry["visits"].append({"image": row["image"], "truth": row.get("truth") or None, "name": row.get("name") or None})
            else:
                raise ValueError(f"{path.name} line {n}: role must be prior or visit, got '{role}'")
    return Manifest(patients=[PatientEntry(**p) for p in patients.values()])


def _csv_rois(value: str | None) -> list[str] | str | None:
    """The CSV ``rois`` cell: empty -> None, ``all``, or names separated by ``;``."""
    value = (value or "").strip()
    if not value:
        return None
    return "all" if value == "all" else [v.strip() for v in value.split(";") if v.strip()]


def _frame_number(path: Path) -> int:
    match = re.match(r"(\d+)", path.stem)
    return int(match.group(1)) if match else -1


def sequences_manifest(folder: str | Path, prior_index: int = 3, unscored: int = 3) -> Manifest:
    """Sequence folders of frames ``<n>.png`` + ``<n>_mask.png`` -> a manifest (sequence = patient)."""
    folder = Path(folder)
    patients = []
    for seq in sorted(p for p in folder.iterdir() if p.is_dir()):
        frames = sorted((p for p in seq.glob("*.png") if not p.stem.endswith("_mask")), key=_frame_number)
        if len(frames) < prior_index:
            continue
        prior = frames[prior_index - 1]
        visits = []
        for i, frame in enumerate(frames):
            if frame == prior:
                continue
            truth = frame.with_name(f"{frame.stem}_mask.png")
            scored = i >= unscored and truth.exists()
            visits.append(VisitEntry(image=str(frame), truth=str(truth) if scored else None, name=frame.stem))
        patients.append(PatientEntry(id=seq.name, prior=PriorEntry(image=str(prior), mask=str(prior.with_name(f"{prior.stem}_mask.png"))), visits=visits))
    if not patients:
        raise ValueError(f"{folder}: no sequence folders with at least {prior_index} frames")
    return Manifest(patients=patients)


@dataclass
class VisitReport:
    patient: str
    visit: str
    found: bool | None = None
    volume_ml: float | None = None
    volume_low_ml: float | None = None  # 90% interval of the uncertainty samples' volumes
    volume_high_ml: float | None = None
    truth_volume_ml: float | None = None
    area_px: int | None = None
    dice: float | None = None
    review: bool | None = None
    flagged_slices: list[int] = field(default_factory=list)
    seconds: float | None = None
    skipped: bool = False
    error: str | None = None


def visit_name(visit: VisitEntry, index: int) -> str:
    return visit.name or f"visit{index + 1:03d}"


def run_batch(
    manifest: Manifest,
    out_dir: str | Path,
    chain: bool = False,
    overrides: dict[str, Any] | None = None,
    progress: Callable[[str, int, int, int, int], None] | None = None,
    run=run_job,
    report_files: bool = True,
) -> list[VisitReport]:
    """Run (or resume) every patient's visits; returns one report row per visit.

    progress(patient, patient_index, n_patients, visits_done, n_visits) after every visit.
    ``report_files=False`` leaves out report.csv/report.json (the service runs one patient per task
    and writes the batch's report once every patient is done); the plots are always written.
    A cancelled job (``JobCancelled`` from ``run``) stops the batch instead of being reported.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    defaults = {**manifest.defaults, **(overrides or {})}
    reports: list[VisitReport] = []
    for pi, patient in enumerate(manifest.patients):
        prior_image, prior_mask, roi, rois = patient.prior.image, patient.prior.mask, patient.prior.roi, patient.prior.rois
        patient_dir = out_dir / patient.id
        for vi, visit in enumerate(patient.visits):
            name = visit_name(visit, vi)
            report = VisitReport(patient=patient.id, visit=name)
            finished = (patient_dir / name / "result.json").is_file()
            t0 = time.perf_counter()
            try:
                spec = JobSpec(prior_image=prior_image, prior_mask=prior_mask, roi=roi, rois=rois,
                               targets=[TargetSpec(path=visit.image, name=name)], **defaults)
                run(spec, patient_dir)
                report.skipped = finished
                _fill(report, patient_dir / name, visit)
            except JobCancelled:
                raise
            except Exception as exc:  # one bad visit must not stop the batch: reported, not hidden
                report.error = _visit_error(exc)
            report.seconds = round(time.perf_counter() - t0, 3)
            reports.append(report)
            if chain and report.error is None and report.found:
                if rois is None:
                    prior_image, prior_mask, roi = visit.image, str(_mask_file(patient_dir / name)), None
                elif (patient_dir / name / "rtstruct.dcm").is_file():  # every structure found, one set
                    prior_image, prior_mask, rois = visit.image, str(patient_dir / name / "rtstruct.dcm"), "all"
            if progress is not None:
                progress(patient.id, pi, len(manifest.patients), vi + 1, len(patient.visits))
    if report_files:
        write_report(reports, out_dir)
    write_plots(reports, out_dir)
    return reports


def _visit_error(exc: Exception) -> str:
    """A visit's error for the report: a user error's message; an internal one only by its type
    (the details go to the log; an internal message may name server paths)."""
    from .errors import classify, message

    meaning = classify(exc)
    if not meaning.user:
        logging.getLogger("p2sam.batch").error("a visit failed: %s (%s)", meaning.title.lower(), type(exc).__name__,
                                               exc_info=exc)
        return f"{type(exc).__name__}: {meaning.detail}"
    return f"{type(exc).__name__}: {message(exc)}"


def write_plots(reports: list[VisitReport], out_dir: Path) -> list[Path]:
    """``<out>/<patient>/volume.png`` for every patient: volume over visits with its band."""
    from .plots import volume_plot

    paths = []
    for patient in dict.fromkeys(r.patient for r in reports):
        rows = [r for r in reports if r.patient == patient]
        paths.append(volume_plot(
            out_dir / patient / "volume.png", patient, [r.visit for r in rows], [r.volume_ml for r in rows],
            [r.volume_low_ml for r in rows], [r.volume_high_ml for r in rows], [r.truth_volume_ml for r in rows]))
    return paths


def _mask_file(folder: Path) -> Path:
    png = folder / "mask.png"
    if not png.exists() and not (folder / "mask.nii.gz").exists() and (folder / "labels.nii.gz").exists():
        return folder / "labels.nii.gz"  # a multi-ROI visit: every structure's label
    return png if png.exists() else folder / "mask.nii.gz"


def _mask_or_empty(path: str | Path, target: imaging.Volume) -> np.ndarray:
    """A result or ground-truth mask; an empty one is an answer here ("not found" / "absent"), not an error."""
    try:
        return imaging.read_mask(path, target)
    except imaging.EmptyRoiError:
        return np.zeros(target.shape, bool)


def _fill(report: VisitReport, folder: Path, visit: VisitEntry) -> None:
    result = TargetResult.read(folder)
    if result is None:
        raise FileNotFoundError(f"{folder.name}: result.json is missing or unreadable")
    report.found = result.found
    report.volume_ml = result.volume_ml
    report.volume_low_ml, report.volume_high_ml = result.qc.get("volume_interval_90_ml") or [None, None]
    report.review = result.review
    report.flagged_slices = result.flagged_slices
    target = imaging.read_image(visit.image)
    predicted = _mask_or_empty(_mask_file(folder), target)
    report.area_px = int(predicted.sum())
    if visit.truth and result.structures is None:
        truth = _mask_or_empty(visit.truth, target)
        report.dice = dice(predicted, truth)
        report.truth_volume_ml = float(truth.sum() * np.prod(target.spacing) / 1000.0)


def summarise(reports: list[VisitReport]) -> dict[str, Any]:
    """Mean Dice per patient (scored visits only) and over patients; counts."""
    per_patient: dict[str, list[float]] = {}
    for r in reports:
        if r.dice is not None:
            per_patient.setdefault(r.patient, []).append(r.dice)
    means = {p: float(np.mean(v)) for p, v in per_patient.items()}
    return {
        "patients": len({r.patient for r in reports}),
        "visits": len(reports),
        "errors": sum(r.error is not None for r in reports),
        "review": sum(bool(r.review) for r in reports),
        "dice_per_patient": means,
        "mean_dice": float(np.mean(list(means.values()))) if means else None,
    }


def write_report(reports: list[VisitReport], out_dir: Path) -> tuple[Path, Path]:
    """report.csv (one row per visit) and report.json (rows + summary), written atomically."""
    rows = [r.__dict__ for r in reports]
    csv_path, json_path = out_dir / "report.csv", out_dir / "report.json"
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(VisitReport.__dataclass_fields__))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "flagged_slices": " ".join(map(str, row["flagged_slices"]))})
    tmp.replace(csv_path)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"summary": summarise(reports), "visits": rows}, indent=2))
    tmp.replace(json_path)
    return csv_path, json_path
