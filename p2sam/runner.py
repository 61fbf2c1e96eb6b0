"""Run one stored job: claim it, call p2sam.pipeline.run_job, record the outcome.

The application layer's job runner: the Celery task (worker/tasks.py) and the embedded executor
(service/embedded.py) are thin adapters that both call :func:`execute_job`; neither has a second
code path, and neither imports the other. The function is idempotent: a job that is
finished or held by a live worker is left alone, a job whose worker vanished is taken over and
``run_job`` skips the targets already written. Logs name job ids only, never patient data.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from models.checkpoints import file_sha256

from .errors import INTERNAL, INVALID_INPUT, STORAGE_UNAVAILABLE, classify, public_detail
from .jobstore import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore, is_transient_io_error, process_owner
from .records import Artifact, JobRecord, Problem, TargetResult, TargetSummary
from .settings import Settings

log = logging.getLogger("p2sam.worker")

MEDIA_TYPES = {".dcm": "application/dicom", ".gz": "application/gzip", ".png": "image/png", ".json": "application/json"}


def problem(status: int, title: str, detail: str, slug: str) -> Problem:
    """An RFC 7807 problem object as stored in a failed job's ``error``."""
    return Problem(type=f"/problems/{slug}", title=title, status=status, detail=detail)


def job_spec(record: JobRecord, data_dir: Path):
    """The record's JobSpec with its data_dir-relative paths made absolute for this host."""
    from .spec import JobSpec

    raw = dict(record.spec)
    raw["prior_image"] = str(data_dir / raw["prior_image"])
    raw["prior_mask"] = str(data_dir / raw["prior_mask"])
    raw["targets"] = [{**t, "path": str(data_dir / t["path"])} for t in raw["targets"]]
    return JobSpec.model_validate(raw)


class _Heartbeat(threading.Thread):
    """Renews the job's lease while run_job works (a dead process stops renewing it)."""

    def __init__(self, store: JobStore, job_id: str, owner: str, interval: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id[:8]}")
        self.store, self.job_id, self.owner, self.interval = store, job_id, owner, interval
        self.stop = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                if not self.store.heartbeat(self.job_id, self.owner):
                    self.lost = True
                    return
            except OSError as exc:  # shared volume hiccup: try again next beat
                log.warning("job %s: heartbeat failed (%s)", self.job_id, type(exc).__name__)


class _Reporter:
    """progress + is_cancelled for run_job, backed by the job record (writes throttled)."""

    def __init__(self, store: JobStore, job_id: str, owner: str, settings: Settings, heartbeat: _Heartbeat,
                 out_dir: Path | None = None) -> None:
        self.store, self.job_id, self.owner, self.heartbeat = store, job_id, owner, heartbeat
        self.out_dir = out_dir or store.results_dir(job_id)
        self.deadline = time.monotonic() + settings.job_soft_time_limit_s
        self.timed_out = False
        self._last_write = 0.0
        self._last_stage = None
        self._last_check = 0.0
        self._cancelled = False
        self._seen = self._finished_targets()

    def _finished_targets(self) -> set[str]:
        if not self.out_dir.is_dir():
            return set()
        return {p.parent.name for p in self.out_dir.glob("*/result.json")}

    def count_new_outputs(self) -> None:
        """Record targets whose outputs appeared since the last look (``writes`` per target)."""
        now = self._finished_targets()
        new = sorted(now - self._seen)
        if not new:
            return
        self._seen |= set(new)

        def change(r: JobRecord) -> None:
            for name in new:
                r.writes[name] = r.writes.get(name, 0) + 1

        self.store.update(self.job_id, change)

    def progress(self, stage: str, fraction: float, message: str, **fields: Any) -> None:
        """Store progress (throttled, unless ``fields`` such as a batch task's visit counts come along)."""
        self.count_new_outputs()
        now = time.monotonic()
        if not fields and stage == self._last_stage and now - self._last_write < 0.5:
            return
        self._last_stage, self._last_write = stage, now
        if not self.store.heartbeat(self.job_id, self.owner, stage=stage, progress=round(min(max(fraction, 0.0), 1.0), 4),
                                    message=message, **fields):
            self.heartbeat.lost = True

    def is_cancelled(self) -> bool:
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return True
        if self.heartbeat.lost:
            return True
        now = time.monotonic()
        if now - self._last_check >= 1.0:
            self._last_check = now
            record = self.store.get(self.job_id)
            self._cancelled = record is not None and record.cancel_requested
        return self._cancelled


def target_summaries(out_dir: Path, targets: list[TargetResult]) -> list[TargetSummary]:
    """What the succeeded job keeps per target: its summary with every file's size and sha256
    (served by the API, sent by dicomnet)."""
    return [t.summary(artifacts_of(out_dir / t.target, t)) for t in targets]


def artifacts_of(folder: Path, result: TargetResult) -> list[Artifact]:
    """The files of one written target (those of ``result.files`` and result.json itself)."""
    artifacts = []
    for kind, file_name in sorted({**result.files, "result": TargetResult.FILE}.items()):
        path = folder / file_name
        if path.is_file():
            artifacts.append(Artifact(name=file_name, kind=kind, size=path.stat().st_size, sha256=file_sha256(path),
                                      media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream")))
    return artifacts


def _clean_partial_outputs(out_dir: Path) -> None:
    """Remove hidden temp folders a killed attempt left behind (finished targets stay)."""
    import shutil

    for tmp in out_dir.glob(".*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def execute_job(job_id: str, store: JobStore, settings: Settings, pool=None,
                timeout_exceptions: tuple[type[BaseException], ...] = ()) -> str:
    """Run the stored job ``job_id`` once; returns what happened: 'succeeded', 'failed',
    'cancelled', 'skipped' (absent, finished, or running on a live worker) or 'deferred' (the data
    volume was read-only or full, or the job store's database did not answer: the job is not
    failed and the caller must try again (the Celery task retries itself). A job not yet claimed
    stays queued; a running one goes back to queued, the attempt not counted, where its record can
    still be written (PostgreSQL), else stays running until this process takes it again or its
    lease lapses)."""
    from .patient_task import patient_folder, run_patient
    from .pipeline import JobCancelled, run_job

    owner = process_owner()
    try:
        record = store.claim(job_id, owner, settings.lease_timeout_s)
    except OSError as exc:  # the claim cannot be written: the job stays queued; the caller tries again later
        if classify(exc) is not STORAGE_UNAVAILABLE:
            raise
        log.error("job %s: not started, the data volume is not writable or the job store's database does not "
                  "answer (%s); it is tried again", job_id, exc.strerror or exc)
        return "deferred"
    if record is None:
        if store.get(job_id) is None:  # a message for a job this worker cannot see: a misconfigured deployment
            log.warning("job %s is not in this worker's data directory (%s): the message is dropped. Do the API and "
                        "the workers share P2SAM_DATA_DIR, and does another deployment use the same broker "
                        "(P2SAM_BROKER_URL)?", job_id, store.data_dir)
        else:
            log.info("job %s: nothing to do (finished or held by a live worker)", job_id)
        return "skipped"
    if record.attempts > settings.job_max_attempts:
        store.transition(job_id, FAILED, {RUNNING}, owner=owner, reason="too many attempts", error=problem(
            500, "Job kept stopping its worker",
            f"the job was started {record.attempts - 1} times and its worker stopped each time (killed by the "
            "hard time limit, out of memory, or a crash); it is not retried again", "worker-lost"))
        return "failed"
    log.info("job %s: attempt %d on %s", job_id, record.attempts, owner)
    beat = _Heartbeat(store, job_id, owner, max(1.0, min(20.0, settings.lease_timeout_s / 6)))
    beat.start()
    patient = record.is_patient_task  # one patient of a batch (p2sam/patient_task.py)
    out_dir = patient_folder(store, record) if patient else store.results_dir(job_id)
    reporter = _Reporter(store, job_id, owner, settings, beat, out_dir)
    try:
        if not patient and record.pull:  # inputs named by study / series UIDs: from the PACS first (dicomnet.pull)
            from dicomnet.pull import pull_inputs

            record = pull_inputs(record, store, settings, reporter.progress, reporter.is_cancelled)
        for retry in range(settings.transient_retries + 1):
            try:
                if patient:
                    outcome = run_patient(record, store, settings, pool, reporter)
                else:
                    spec = job_spec(record, store.data_dir)
                    summary = run_job(spec, out_dir, pool=pool, progress=reporter.progress,
                                      on_model=lambda model: reporter.progress("loading", 0.04, "model loaded",
                                                                               model={**record.model.model_dump(), **model}),
                                      is_cancelled=reporter.is_cancelled, settings=settings)
                break
            except Exception as exc:
                if not is_transient_io_error(exc) or retry == settings.transient_retries:
                    raise
                log.warning("job %s: transient I/O error (%s), retry %d in %d s", job_id, type(exc).__name__, retry + 1, 2 ** retry)
                store.update(job_id, _count_retry)
                time.sleep(2 ** retry)
        reporter.count_new_outputs()
        _clean_partial_outputs(out_dir)
        if patient:
            done = store.transition(job_id, SUCCEEDED, {RUNNING}, owner=owner, reason="finished", stage="done",
                                    progress=1.0, message="finished", **outcome)
            return SUCCEEDED if done else "skipped"
        warnings = sorted({w for t in summary.targets for w in t.warnings})
        done = store.transition(job_id, SUCCEEDED, {RUNNING}, owner=owner, reason="finished", stage="done", progress=1.0,
                                message="finished", summary=summary.provenance(),
                                results=target_summaries(out_dir, summary.targets), warnings=warnings,
                                model={**record.model.model_dump(), **summary.model})
        log.info("job %s: %s", job_id, "succeeded" if done else "finished, but another worker took it over")
        return SUCCEEDED if done else "skipped"
    except JobCancelled:
        if reporter.timed_out:
            return _fail(store, job_id, owner, problem(
                504, "Job took too long", f"the job did not finish within P2SAM_JOB_SOFT_TIME_LIMIT_S = "
                f"{settings.job_soft_time_limit_s} s", "time-limit"))
        if beat.lost:
            log.info("job %s: lease lost, stopped", job_id)
            return "skipped"
        store.transition(job_id, CANCELLED, {RUNNING}, owner=owner, reason="cancel requested", message="cancelled")
        latest = store.get(job_id)
        if latest is not None and latest.purge_requested:
            store.purge(job_id, "deleted by its owner")
        log.info("job %s: cancelled", job_id)
        return CANCELLED
    except timeout_exceptions:
        return _fail(store, job_id, owner, problem(
            504, "Job took too long", f"the job did not finish within {settings.job_soft_time_limit_s} s", "time-limit"))
    except Exception as exc:  # what it means to the user: one table (p2sam.errors), shared with the CLI and the API
        meaning = classify(exc)
        if meaning is STORAGE_UNAVAILABLE:  # the volume cannot be written: the job is not failed, and not counted
            log.error("job %s: the data volume is not writable (%s); the job is tried again", job_id,
                      getattr(exc, "strerror", None) or type(exc).__name__)
            with contextlib.suppress(Exception):  # a record on the volume cannot say so (it stays running: the
                # lease decides); one in PostgreSQL goes back to queued, this attempt not counted
                store.transition(job_id, QUEUED, {RUNNING}, owner=owner, reason="the data volume is not writable",
                                 attempts=record.attempts - 1, lease=None, stage="queued",
                                 message="waiting: the data volume is not writable")
            return "deferred"
        if meaning is INTERNAL:
            log.exception("job %s: internal error (%s)", job_id, type(exc).__name__)
            return _fail(store, job_id, owner, problem(500, INTERNAL.title, "the job failed because of an internal "
                                                       f"error ({type(exc).__name__}); the server log has the details "
                                                       f"under job id {job_id}", INTERNAL.slug))
        if meaning is INVALID_INPUT:
            log.info("job %s: bad input (%s)", job_id, type(exc).__name__)
        else:
            log.error("job %s: %s (%s)", job_id, meaning.title.lower(), type(exc).__name__)
        return _fail(store, job_id, owner, problem(meaning.status, meaning.title, public_detail(exc, meaning), meaning.slug))
    finally:
        beat.stop.set()
        if patient:  # the batch's state and, once every patient is done, its report (else maintenance does it)
            from .batchstore import BatchStore

            try:
                BatchStore(store).settle(record.batch.id)
            except Exception as exc:
                log.warning("batch %s: could not settle (%s)", record.batch.id, type(exc).__name__, exc_info=exc)


def _count_retry(r: JobRecord) -> None:
    r.retries += 1


def _fail(store: JobStore, job_id: str, owner: str, error: Problem) -> str:
    done = store.transition(job_id, FAILED, {RUNNING}, owner=owner, reason=error.title, message=error.title, error=error)
    return FAILED if done else "skipped"


__all__ = ["execute_job", "job_spec", "target_summaries", "artifacts_of", "problem", "QUEUED"]
