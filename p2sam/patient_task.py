"""Run one patient of a batch: :func:`p2sam.batch.run_batch` over that patient's visits, in order.

Called by :func:`p2sam.runner.execute_job` for job records of kind ``batch-patient`` (the same
claim, lease, heartbeat, cancel and failure handling as a job). Visits are written into the
batch folder (``results/<batch>/<patient>/<visit>/``); finished visits are skipped on a re-run,
half-written ones redone, so a task redelivered after its worker died resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .batchstore import write_visits
from .jobstore import JobStore
from .records import JobRecord
from .settings import Settings


def patient_folder(store: JobStore, record: JobRecord) -> Path:
    """Where the task writes its visits: results/<batch id>/<patient id>/."""
    return store.results_dir(record.batch.id) / record.batch.patient


def _absolute(entry: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """The stored patient entry with its data_dir-relative paths made absolute for this host."""
    prior = {**entry["prior"], "image": str(data_dir / entry["prior"]["image"]),
             "mask": str(data_dir / entry["prior"]["mask"])}
    visits = [{**v, "image": str(data_dir / v["image"]), "truth": str(data_dir / v["truth"]) if v.get("truth") else None}
              for v in entry["visits"]]
    return {**entry, "prior": prior, "visits": visits}


def run_patient(record: JobRecord, store: JobStore, settings: Settings, pool, reporter) -> dict[str, Any]:
    """Run (or resume) the task's patient; returns the fields its succeeded record gets.

    ``reporter`` is the runner's progress / cancel / lease object (p2sam.runner._Reporter)."""
    from .batch import Manifest, PatientEntry, run_batch
    from .pipeline import run_job

    spec = record.spec
    patient = PatientEntry.model_validate(_absolute(spec["patient"], store.data_dir))
    n = len(patient.visits)
    state = {"done": 0, "errors": 0}

    def run(job_spec, out_dir):
        base = state["done"]
        reporter.deadline = time.monotonic() + settings.job_soft_time_limit_s  # the time limit is per visit

        def progress(stage: str, fraction: float, message: str) -> None:
            reporter.progress(stage, (base + fraction) / n, f"visit {base + 1}/{n}: {message}")

        try:
            return run_job(job_spec, out_dir, pool=pool, progress=progress, is_cancelled=reporter.is_cancelled,
                           settings=settings)
        except Exception as exc:
            if type(exc).__name__ != "JobCancelled":
                state["errors"] += 1  # run_batch reports it in the visit's row and goes on
            raise

    def visit_done(patient_id: str, pi: int, n_patients: int, visits_done: int, n_visits: int) -> None:
        state["done"] = visits_done
        reporter.count_new_outputs()
        reporter.progress("segmenting", visits_done / n, f"{visits_done}/{n} visits done",
                          visits_done=visits_done, visit_errors=state["errors"])

    t0 = time.perf_counter()
    reports = run_batch(Manifest(patients=[patient]), store.results_dir(record.batch.id), chain=spec["chain"],
                        overrides=spec["defaults"], progress=visit_done, run=run, report_files=False)
    write_visits(patient_folder(store, record), [r.__dict__ for r in reports])
    scored = [r.dice for r in reports if r.dice is not None]
    return {"visits_done": n, "visit_errors": sum(r.error is not None for r in reports),
            "summary": {"visits": n, "errors": sum(r.error is not None for r in reports),
                        "skipped": sum(r.skipped for r in reports), "scored": len(scored),
                        "mean_dice": sum(scored) / len(scored) if scored else None,
                        "seconds": round(time.perf_counter() - t0, 3)}}
