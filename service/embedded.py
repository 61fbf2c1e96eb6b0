"""Embedded mode (no P2SAM_BROKER_URL): one background thread runs queued jobs in-process.

The queue is the job store itself: the thread takes the oldest queued job (interactive before
batch) and runs it with the same :func:`p2sam.runner.execute_job` the Celery task uses, so a
laptop with no Redis runs exactly the code a GPU cluster runs.
"""

from __future__ import annotations

import logging
import threading

from p2sam.jobstore import QUEUED, JobStore
from p2sam.settings import Settings

log = logging.getLogger("p2sam.embedded")


class EmbeddedExecutor:
    def __init__(self, store: JobStore, settings: Settings, pool) -> None:
        self.store, self.settings, self.pool = store, settings, pool
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="p2sam-embedded-worker", daemon=True)

    def start(self) -> None:
        for job_id in self.store.requeue_expired(self.settings.lease_timeout_s):
            log.info("job %s: its previous process stopped; re-queued", job_id)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def next_job(self) -> str | None:
        queued = self.store.by_state(QUEUED)
        queued.sort(key=lambda r: (r.queue != "interactive", r.created_at))
        return queued[0].id if queued else None

    def _loop(self) -> None:
        from p2sam.runner import execute_job

        while not self._stop.is_set():
            job_id = self.next_job()
            if job_id is None:
                self._wake.wait(2.0)
                self._wake.clear()
                continue
            try:
                execute_job(job_id, self.store, self.settings, pool=self.pool)
            except Exception as exc:  # execute_job records failures itself; never let the thread die
                from p2sam.errors import STORAGE_UNAVAILABLE, classify

                if classify(exc) is STORAGE_UNAVAILABLE:  # read-only / full volume: wait, calmly, and retry
                    log.error("job %s: cannot run, the data volume is not writable (%s)", job_id, exc.strerror)
                else:
                    log.exception("job %s: the embedded worker failed", job_id)
                self._stop.wait(5.0)  # never a tight loop on a job that cannot be claimed
