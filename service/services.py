"""What the routes use, built once per app: settings, stores, auth, audit, the way jobs run.

Broker mode (P2SAM_BROKER_URL set): jobs are published to Celery (p2sam.dispatch); embedded
mode: one in-process thread runs them (service.embedded). Routes call :meth:`enqueue` and never
know which.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from p2sam import liveness
from p2sam.batchstore import BatchStore
from p2sam.jobstore import new_id, open_store
from p2sam.settings import Settings, apply_process_limits

from .audit import AuditLog
from .auth import KeyStore
from .submit import Idempotency
from .uploads import UploadStore

READY_CACHE_S = 5.0
PING_TIMEOUT_S = 2.0


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        apply_process_limits(settings)
        self.store = open_store(settings)
        self.batches = BatchStore(self.store)
        self.uploads = UploadStore(self.store, max_bytes=settings.max_upload_mb * (1 << 20))
        self.keys = KeyStore(self.store.data_dir)
        self.audit = AuditLog(self.store.data_dir)
        self.idempotency = Idempotency(self.store.data_dir)
        self.dispatcher = None
        self.embedded = None
        self._pool = None
        self._pool_lock = threading.Lock()
        self._ready: tuple[float, bool, dict[str, Any]] | None = None
        if settings.broker_url:
            from p2sam.broker import make_app
            from p2sam.dispatch import Dispatcher

            self.dispatcher = Dispatcher(self.store, settings, make_app(settings))
        from .maintenance import Maintenance

        self.maintenance = Maintenance(self)

    # --- lifecycle
    def start(self) -> None:
        if self.dispatcher is None:
            from .embedded import EmbeddedExecutor

            self.embedded = EmbeddedExecutor(self.store, self.settings, self.model_pool())
            self.embedded.start()
        self.maintenance.start()  # its first round re-enqueues what the broker may have lost

    def stop(self) -> None:
        self.maintenance.stop()
        if self.embedded is not None:
            self.embedded.stop()

    # --- jobs
    def enqueue(self, job_id: str) -> None:
        if self.dispatcher is not None:
            self.dispatcher.publish(job_id)  # if the broker is down, the maintenance sweep retries
        elif self.embedded is not None:
            self.embedded.wake()

    # --- models
    def model_pool(self):
        """The process's ModelPool (loads models only in embedded mode; else lists them)."""
        with self._pool_lock:
            if self._pool is None:
                from p2sam.modelpool import ModelPool

                self._pool = ModelPool(self.settings)
            return self._pool

    def model_files(self) -> dict[str, Path]:
        return self.model_pool().files()

    # --- readiness
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, checks): the job store is writable; broker mode: the broker answers and at
        least one worker answers a ping (cached a few seconds); embedded: the worker thread lives."""
        now = time.monotonic()
        if self._ready is not None and now - self._ready[0] < READY_CACHE_S:
            return self._ready[1], self._ready[2]
        checks: dict[str, Any] = {"job_store": self._store_writable() and self.store.reachable()}
        if self.dispatcher is not None:
            checks["broker"] = self.dispatcher.epoch() is not None
            answering: list[str] = []
            ready: list[str] = []
            if checks["broker"]:
                # A worker's parent answers pings even while its pool process is dead or still loading
                # the model: count only workers whose pool process says it is ready (p2sam/liveness.py).
                for limit in (1, None):  # the first answer is usually enough; else ask them all
                    try:
                        answering = self.dispatcher.ping_workers(timeout=PING_TIMEOUT_S, limit=limit)
                    except Exception:
                        answering = []
                    ready = [w for w in answering if liveness.state(self.settings.data_dir, w) == "ready"]
                    if ready:
                        break
            checks["workers"] = len(ready)
            if len(answering) > len(ready):
                checks["workers_starting"] = len(answering) - len(ready)  # answering, pool process not ready
            ok = checks["job_store"] and checks["broker"] and bool(ready)
        else:
            checks["embedded_worker"] = bool(self.embedded and self.embedded.alive())
            ok = checks["job_store"] and checks["embedded_worker"]
        self._ready = (now, ok, checks)
        return ok, checks

    def _store_writable(self) -> bool:
        probe = self.store.jobs_dir / f".probe-{new_id()}"
        try:
            probe.write_text("ok")
            probe.unlink()
            return True
        except OSError:
            return False
