"""Batch records for the service: one record per batch, one job record per patient ("task").

Layout under ``data_dir`` (beside :mod:`p2sam.jobstore`'s)::

    batches/<id>.json     the batch record (same JobStore code: atomic writes, locks, guarded
                          transitions, terminal_transitions / refused_transitions counters)
    jobs/<task>.json      one job record per patient, ``kind = "batch-patient"``, queue ``batch``
    results/<id>/         the batch folder, laid out like ``p2sam batch run --out``:
                          <patient>/<visit>/...  <patient>/volume.png  <patient>/visits.json
                          report.csv  report.json (once every patient is done)

A patient task is an ordinary job record, so the job store's leases, heartbeats, re-queueing of
vanished workers and the dispatcher's re-publishing cover batches with no second mechanism; the
worker runs it with :func:`p2sam.batch.run_batch` for that one patient (finished visits are
skipped, half-written ones redone). The batch's own state follows its tasks: :meth:`settle`
(called by the worker after each task, by the API's maintenance loop and on reads) moves it
queued -> running -> succeeded | failed | cancelled and writes the report exactly once.
Records hold upload ids, patient ids of the manifest and visit names only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from .jobstore import ACTIVE, CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, JobStore, file_lock, write_json_atomic
from .records import BatchRecord, JobRecord, Problem

VISITS_FILE = "visits.json"


class BatchStore:
    """Batches of ``jobs`` (the job store whose records hold the patient tasks)."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.records = jobs.sibling("batches")

    # --- reading
    def get(self, batch_id: str) -> BatchRecord | None:
        return self.records.get(batch_id)

    def all(self) -> list[BatchRecord]:
        return list(self.records.all())

    def folder(self, batch_id: str) -> Path:
        """The batch folder (results/<id>), laid out like a local ``p2sam batch run``."""
        return self.jobs.results_dir(batch_id)

    def tasks(self, batch: BatchRecord) -> list[JobRecord | None]:
        """The patient tasks in manifest order (None for one that is missing)."""
        return [self.jobs.get(p["task"]) for p in batch.patients]

    def progress(self, batch: BatchRecord) -> dict[str, Any]:
        """Per patient (state, visits done / total, visit errors, attempts, error) and overall."""
        patients = []
        for p, task in zip(batch.patients, self.tasks(batch)):
            if task is None:
                patients.append({"id": p["id"], "state": FAILED, "visits_done": 0, "visits_total": p["visits"],
                                 "errors": 0, "attempts": 0, "error": _lost(p["id"]).model_dump(exclude_none=True)})
                continue
            done = p["visits"] if task.state == SUCCEEDED else min(task.visits_done, p["visits"])
            patients.append({"id": p["id"], "state": task.state, "visits_done": done, "visits_total": p["visits"],
                             "errors": task.visit_errors, "attempts": task.attempts,
                             "error": task.error.model_dump(exclude_none=True) if task.error else None})
        total = sum(p["visits_total"] for p in patients)
        done = sum(p["visits_done"] for p in patients)
        return {"patients": patients, "done": done, "total": total, "errors": sum(p["errors"] for p in patients),
                "progress": round(done / total, 4) if total else 1.0}

    # --- writing
    def create(self, batch: BatchRecord, tasks: list[JobRecord]) -> BatchRecord:
        """Store the patient tasks (queued), then the batch; the caller publishes the tasks.

        Tasks first: a batch record is never seen without its tasks (which :meth:`settle` would
        count as lost); tasks whose batch record was never written settle nothing."""
        for task in tasks:
            self.jobs.create(task)
        return self.records.create(batch)

    def settle(self, batch_id: str) -> BatchRecord | None:
        """Bring the batch's state in line with its tasks (idempotent; safe from any process):
        queued -> running once a task started; when every task is terminal, write report.csv /
        report.json and finish the batch (one guarded transition); purge it if deletion was asked."""
        batch = self.get(batch_id)
        if batch is None:
            return None
        tasks = self.tasks(batch)
        states = [t.state if t else FAILED for t in tasks]
        if batch.state not in TERMINAL:
            if all(s in TERMINAL for s in states):
                with self._finishing(batch_id):  # one process writes the report; the others then see it finished
                    batch = self.get(batch_id)
                    if batch.state not in TERMINAL:
                        batch = self._finish(batch, tasks, states)
                    batch = batch or self.get(batch_id)
            elif batch.state == QUEUED and any(s != QUEUED for s in states):
                batch = self.records.transition(batch_id, RUNNING, {QUEUED}, reason="a patient started",
                                                stage="running", message="running") or self.get(batch_id)
        if batch and batch.purge_requested and not batch.purged_at and all(s in TERMINAL for s in states):
            batch = self.purge(batch_id, batch.purge_reason or "deleted")
        return batch

    @contextlib.contextmanager
    def _finishing(self, batch_id: str) -> Iterator[None]:
        """Lock held while a batch's report is written (beside, not inside, the record's own lock)."""
        with file_lock(self.records.jobs_dir / f"{batch_id}.finish.lock"):
            yield

    def _finish(self, batch: BatchRecord, tasks: list[JobRecord | None], states: list[str]) -> BatchRecord | None:
        from .batch import summarise, write_report

        if batch.cancel_requested or CANCELLED in states:
            return self.records.transition(batch.id, CANCELLED, ACTIVE, reason="cancelled", message="cancelled")
        rows = self._rows(batch, tasks)
        folder = self.folder(batch.id)
        folder.mkdir(parents=True, exist_ok=True)
        write_report(rows, folder)
        ok = all(s == SUCCEEDED for s in states)
        return self.records.transition(
            batch.id, SUCCEEDED if ok else FAILED, ACTIVE, reason="every patient finished",
            stage="done", progress=1.0, message="finished" if ok else "finished; some patients failed",
            summary=summarise(rows))

    def _rows(self, batch: BatchRecord, tasks: list[JobRecord | None]) -> list:
        """Every visit's report row in manifest order; a failed patient's visits carry its error."""
        from .batch import VisitReport

        rows = []
        for p, task in zip(batch.patients, tasks):
            path = self.folder(batch.id) / p["id"] / VISITS_FILE
            if task is not None and task.state == SUCCEEDED and path.is_file():
                rows += [VisitReport(**row) for row in json.loads(path.read_text())]
                continue
            error = (task.error.detail if task is not None and task.error else "") or _lost(p["id"]).detail
            rows += [VisitReport(patient=p["id"], visit=v, error=f"patient not finished: {error}") for v in p["visit_names"]]
        return rows

    def cancel(self, batch_id: str, by: str) -> BatchRecord | None:
        """Cancel (queued tasks now, running ones at their next check) and purge once stopped."""
        def ask(r: BatchRecord) -> None:
            r.cancel_requested = r.state not in TERMINAL or r.cancel_requested
            r.purge_requested, r.purge_reason = True, f"deleted by {by}"

        batch = self.records.update(batch_id, ask)
        if batch is None:
            return None
        for p in batch.patients:
            task_id = p["task"]
            self.jobs.transition(task_id, CANCELLED, {QUEUED}, reason=f"batch deleted by {by}", message="cancelled")

            def request(r: JobRecord) -> None:
                if r.state in ACTIVE:
                    r.cancel_requested = True  # the worker stops at its next check
                r.purge_requested = True

            task = self.jobs.update(task_id, request)
            if task is not None and task.state in TERMINAL and not task.purged_at:
                self.jobs.purge(task_id, f"batch deleted by {by}")
        return self.settle(batch_id)

    def purge(self, batch_id: str, reason: str) -> BatchRecord | None:
        """Delete the batch folder and every task's inputs; the records stay as tombstones."""
        batch = self.get(batch_id)
        if batch is None:
            return None
        for p in batch.patients:
            task = self.jobs.get(p["task"])
            if task is not None and not task.purged_at:
                self.jobs.purge(p["task"], reason)
        shutil.rmtree(self.folder(batch_id), ignore_errors=True)

        def tombstone(r: BatchRecord) -> None:
            r.purged_at, r.purge_reason, r.purge_requested, r.summary = time.time(), reason, False, None

        return self.records.update(batch_id, tombstone)

    def sweep(self, retention_cutoff: float | None = None) -> list[str]:
        """Settle every unfinished or to-be-purged batch; purge those finished before
        ``retention_cutoff``. Returns the ids purged by retention."""
        purged = []
        for batch in self.all():
            if batch.state not in TERMINAL or (batch.purge_requested and not batch.purged_at):
                self.settle(batch.id)
            elif retention_cutoff is not None and not batch.purged_at and (batch.finished_at or 0) < retention_cutoff:
                self.purge(batch.id, "retention")
                purged.append(batch.id)
        return purged


def write_visits(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """A patient's report rows (``<batch>/<patient>/visits.json``), written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / VISITS_FILE
    write_json_atomic(path, rows)
    return path


def _lost(patient: str) -> Problem:
    return Problem(type="/problems/task-missing", title="Patient task missing", status=500,
                   detail=f"the task of patient {patient} is missing from the job store (lost during submission)")
