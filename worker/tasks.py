"""The one Celery task: run a stored job (p2sam.runner.execute_job) by its id: a thin adapter.

The model pool is created once per worker process in ``worker_process_init`` (after the fork:
CUDA is never touched in the parent); the parent re-enqueues jobs whose message may be lost
and recovers jobs of vanished workers when it starts (``worker_ready``).
"""

from __future__ import annotations

import logging
import threading

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready

from p2sam.jobstore import JobStore, open_store
from p2sam.logs import configure
from p2sam.runner import execute_job
from p2sam.settings import apply_process_limits, get_settings

from .celery_app import TASK_NAME, app

log = logging.getLogger("p2sam.worker")
_store: JobStore | None = None


def store() -> JobStore:
    global _store
    if _store is None:
        _store = open_store(get_settings())
    return _store


@worker_process_init.connect
def _load_models(sender: object = None, **_: object) -> None:
    """In each pool process: create the model pool and load the default model once; the worker
    counts as ready (p2sam/liveness.py) only once that is done."""
    from p2sam.modelpool import default_pool

    from p2sam import liveness

    settings = get_settings()
    configure(settings.log_level)
    apply_process_limits(settings)
    worker = str(sender or "")
    if worker:
        liveness.mark(settings.data_dir, worker, "starting")
    try:
        _preload(settings, default_pool())
    finally:
        if worker:
            liveness.keep_ready(settings.data_dir, worker)


def _preload(settings, pool) -> None:
    name = settings.default_model_ct
    if name in pool.files():
        try:
            pool.get(name)
        except Exception as exc:  # a broken default model must not stop the worker: jobs report it
            log.error("could not preload model %s (%s)", name, type(exc).__name__)
    else:
        log.info("default model %s not installed; models load on first use", name)


@worker_ready.connect
def _recover(**_: object) -> None:
    """In the parent, once connected: re-enqueue lost queued jobs, recover orphaned running ones."""
    from p2sam.dispatch import Dispatcher

    configure(get_settings().log_level)
    def run() -> None:
        try:
            Dispatcher(store(), get_settings(), app).sweep()
        except Exception as exc:  # the API's maintenance loop retries
            log.warning("start-up recovery failed (%s)", type(exc).__name__)

    threading.Thread(target=run, name="p2sam-recover", daemon=True).start()


DEFERRED_RETRY_S = 10  # a job deferred because the data volume is read-only or full: its message comes back this late


@app.task(name=TASK_NAME, ignore_result=True, bind=True, max_retries=None)
def run_job_task(self, job_id: str) -> str:
    """Run job ``job_id`` (idempotent: a finished or live-held job is a no-op). A job deferred for a
    read-only or full data volume is sent again (the message is acknowledged; the job record could
    not say it is waiting, so without this no sweep would publish it again)."""
    from p2sam.modelpool import default_pool

    outcome = execute_job(job_id, store(), get_settings(), pool=default_pool(), timeout_exceptions=(SoftTimeLimitExceeded,))
    if outcome == "deferred":
        raise self.retry(countdown=DEFERRED_RETRY_S)
    return outcome
