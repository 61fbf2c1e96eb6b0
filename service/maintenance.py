"""Background housekeeping in the API process: lost messages, vanished workers, retention.

Every ``P2SAM_MAINTENANCE_INTERVAL_S``:

- broker mode: :meth:`p2sam.dispatch.Dispatcher.sweep` re-publishes queued jobs the broker may
  have lost (never published, or published before a Redis restart) and re-queues running jobs
  whose worker stopped heartbeating;
- jobs deleted while running are purged once their worker has stopped;
- batches follow their patient tasks (``BatchStore.sweep``: state, report, purge once deleted);
- retention: inputs and results of jobs finished more than ``P2SAM_RETENTION_HOURS`` ago are
  purged (audited as key ``retention``), as are uploads no job used and old idempotency keys.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time

from p2sam.jobstore import TERMINAL, valid_id

log = logging.getLogger("p2sam.maintenance")


class Maintenance:
    def __init__(self, services) -> None:
        self.services = services
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="p2sam-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception as exc:  # keep going: the next round retries
                from p2sam.errors import STORAGE_UNAVAILABLE, classify

                if classify(exc) is STORAGE_UNAVAILABLE:  # one line a round, not a traceback
                    log.warning("maintenance round skipped: the data volume is not writable (%s)", exc.strerror)
                else:
                    log.warning("maintenance round failed (%s)", type(exc).__name__, exc_info=exc)
            if self._stop.wait(self.services.settings.maintenance_interval_s):
                return

    def run_once(self) -> None:
        s = self.services
        if s.dispatcher is not None:
            s.dispatcher.sweep()
        else:
            s.store.requeue_expired(s.settings.lease_timeout_s)
        for r in s.store.all():
            if r.state in TERMINAL and r.purge_requested and not r.purged_at:
                s.store.purge(r.id, "deleted by its owner")
                s.audit.write("maintenance", "job.purge", job_id=r.id, reason="deleted while running")
        cutoff = time.time() - s.settings.retention_hours * 3600 if s.settings.retention_hours > 0 else None
        for batch_id in s.batches.sweep(retention_cutoff=cutoff):
            s.audit.write("retention", "batch.purge", batch_id=batch_id)
        if cutoff is not None:
            self.retention(cutoff)

    def retention(self, cutoff: float) -> None:
        s = self.services
        used: set[str] = set()
        for r in s.store.all():
            used.update(r.uploads)
            if r.state in TERMINAL and not r.purged_at and (r.finished_at or 0) < cutoff:
                s.store.purge(r.id, "retention")
                s.audit.write("retention", "job.purge", job_id=r.id)
        for folder in (s.store.data_dir / "uploads").iterdir():
            if valid_id(folder.name) and folder.name not in used and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                s.audit.write("retention", "upload.purge", upload_id=folder.name)
        for entry in s.idempotency.folder.glob("*.json"):
            try:
                created = json.loads(entry.read_text()).get("created_at") or entry.stat().st_mtime  # (older entries: mtime)
                if created < cutoff:
                    entry.unlink()
            except (OSError, ValueError):
                continue
