"""Putting jobs on the broker, and making sure none is forgotten there.

The job store is the source of truth; a broker message is only a wake-up call carrying a job
id. :class:`Dispatcher` publishes a job and remembers in its record which broker *epoch* (the
Redis server's ``run_id``, new after every Redis restart) holds the message. ``sweep()``, run by
the API on start and periodically, and by each worker on start:

- re-publishes queued jobs never published or published to an earlier epoch (a Redis restart
  without persistence loses its lists; with AOF the duplicate message is a harmless no-op);
- re-queues running jobs whose worker is gone (lease expired) and publishes them again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .broker import TASK_NAME
from .jobstore import QUEUED, JobStore
from .records import JobRecord, Published
from .settings import Settings

log = logging.getLogger("p2sam.dispatch")


class Dispatcher:
    def __init__(self, store: JobStore, settings: Settings, app: Any = None) -> None:
        if app is None:
            from .broker import make_app

            app = make_app(settings)
        self.store, self.settings, self.app = store, settings, app
        self._redis = None

    def epoch(self) -> str | None:
        """The broker's identity for this incarnation; None while unreachable."""
        url = self.settings.broker_url or ""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return "static"
        try:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=3)
            return str(self._redis.info("server")["run_id"])
        except Exception as exc:
            log.warning("broker unreachable (%s)", type(exc).__name__)
            return None

    def publish(self, job_id: str, epoch: str | None = None) -> bool:
        """Send the job's id to its queue; record the epoch. False when the broker is down."""
        record = self.store.get(job_id)
        if record is None or record.state != QUEUED:
            return False
        epoch = epoch or self.epoch()
        if epoch is None:
            return False
        limits = {k: getattr(record, k) for k in ("soft_time_limit", "time_limit") if getattr(record, k)}  # a batch task: per visit
        try:
            self.app.send_task(TASK_NAME, args=[job_id], queue=record.queue, retry=True, **limits,
                               retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1})
        except Exception as exc:
            log.warning("job %s: could not publish (%s); the maintenance sweep retries", job_id, type(exc).__name__)
            return False

        def change(r: JobRecord) -> None:
            r.published = Published(count=r.published.count + 1, epoch=epoch, at=time.time())

        self.store.update(job_id, change)
        return True

    def sweep(self) -> dict[str, int]:
        """Recover orphaned running jobs, then (re)publish queued jobs the broker may not hold."""
        requeued = self.store.requeue_expired(self.settings.lease_timeout_s)
        for job_id in requeued:
            log.info("job %s: its worker stopped; re-queued", job_id)
        epoch = self.epoch()
        published = 0
        if epoch is not None:
            for r in self.store.by_state(QUEUED):
                if r.published.epoch != epoch:
                    published += self.publish(r.id, epoch)
        if published:
            log.info("published %d queued job(s) the broker did not hold", published)
        return {"requeued": len(requeued), "published": published}

    def ping_workers(self, timeout: float = 1.0, limit: int | None = 1) -> list[str]:
        """Names of the workers answering a ping (by default it stops at the first answer)."""
        replies = self.app.control.ping(timeout=timeout, limit=limit) or []
        return [name for reply in replies for name in reply]
