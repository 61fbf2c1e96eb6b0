"""The sender: finished jobs -> deliveries in the outbox -> sent, retried, mirrored into the job.

:meth:`Gateway.run_once` (every ``P2SAM_DICOM_SEND_INTERVAL_S`` in ``p2sam dicom-listener``, or
once with ``p2sam dicom-send``):

1. every succeeded job with ``dicom.destinations`` whose deliveries are not yet enqueued gets one
   delivery per (RTSTRUCT / SEG / probability SEG, destination) — idempotently;
2. every due delivery is claimed, sent, and its outcome recorded (see :mod:`dicomnet.outbox`);
   a destination that is down in this round is not tried again in the same round;
3. the job's record gets the summary of its deliveries (``deliveries``, shown by the API).

Several gateways may share a data volume: claims are exclusive.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from p2sam.jobstore import SUCCEEDED, JobStore, open_store, process_owner
from p2sam.records import DicomInfo, JobRecord

from .outbox import DELIVERED, FAILED, REFUSED, SENT_KINDS, Outbox, public
from .peers import Peer, PeerError, check_destinations, default_destinations, peers_of
from .send import REFUSED as OUT_REFUSED
from .send import TRANSIENT, Outcome, send_file

log = logging.getLogger("p2sam.dicomnet")


class Gateway:
    def __init__(self, settings, store: JobStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.outbox = Outbox(self.store.data_dir)
        self.peers: dict[str, Peer] = peers_of(settings)
        self.owner = process_owner()
        self._audit = None

    @property
    def lease_s(self) -> float:
        return 4 * self.settings.dicom_timeout_s + 30

    # --- enqueueing
    def enqueue_job(self, record: JobRecord, destinations: list[str]) -> list[dict]:
        """One delivery per sendable artifact of the job and destination (existing ones are kept)."""
        created = []
        for t in record.results or []:
            for a in t.artifacts:
                if a.kind not in SENT_KINDS:
                    continue
                path = self.store.results_dir(record.id) / t.target / a.name
                sop_class = sop_instance = ""
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
                    sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
                except (OSError, AttributeError, pydicom.errors.InvalidDicomError):
                    pass  # sending will say what is wrong
                for dest in destinations:
                    peer = self.peers.get(dest)
                    rec, new = self.outbox.add(record.id, t.target, a.name, a.kind, dest,
                                               peer.protocol if peer else "unknown", sop_class, sop_instance)
                    if new:
                        created.append(rec)
        if created:
            log.info("job %s: %d deliveries enqueued", record.id, len(created))
        return created

    def destinations_of(self, record: JobRecord) -> list[str] | None:
        """Where the job's results go: its own ``dicom.destinations``, else (a job that named none,
        finished since the outbox was created, not a batch's patient task) P2SAM_DICOM_DESTINATIONS."""
        if record.dicom is not None:
            return list(record.dicom.destinations)
        defaults = default_destinations(self.settings)
        if not defaults or record.is_patient_task or (record.finished_at or 0) < self.outbox.since:
            return []
        return defaults

    def sweep_jobs(self) -> list[str]:
        """Enqueue the deliveries of succeeded jobs that ask for some; returns those job ids."""
        done = []
        for r in self.store.by_state(SUCCEEDED):
            if (r.dicom is not None and r.dicom.enqueued) or r.purged_at:
                continue
            destinations = self.destinations_of(r)
            if not destinations:
                continue
            self._enqueue_and_mark(r, destinations)
            done.append(r.id)
        return done

    def _enqueue_and_mark(self, record: JobRecord, destinations: list[str]) -> list[dict]:
        created = self.enqueue_job(record, destinations)

        def mark(rec: JobRecord) -> None:
            rec.dicom = DicomInfo(destinations=destinations, enqueued=time.time())

        self.store.update(record.id, mark)
        self.mirror(record.id)
        return created

    def request(self, record: JobRecord, destinations: list[str] | None, again: bool = False) -> list[str]:
        """``POST /v1/jobs/{id}/deliveries``: deliver a succeeded job's results to ``destinations``
        (new ones are added to the job; absent: all it has), re-sending refused / failed deliveries
        there (``again``: delivered ones too). Returns the ids of the deliveries now due; PeerError
        for an unknown peer or a job without destinations."""
        current = self.destinations_of(record)
        wanted = list(destinations) if destinations is not None else current
        if not wanted:
            raise PeerError("the job has no destinations; name some (peers: "
                            f"{', '.join(sorted(self.peers)) or 'none configured (P2SAM_DICOM_PEERS)'})")
        check_destinations(wanted, self.peers)
        created = self._enqueue_and_mark(record, list(dict.fromkeys([*current, *wanted])))
        ids = [d["id"] for d in self.outbox.for_job(record.id) if d["destination"] in wanted]
        resent = self.outbox.resend(record.id, ids, include_delivered=again)
        self.mirror(record.id)
        due = {d["id"] for d in created if d["destination"] in wanted} | {d["id"] for d in resent}
        log.info("job %s: %d deliveries requested", record.id, len(due))
        return sorted(due)

    # --- sending
    def send_due(self, job_ids: list[str] | None = None) -> list[dict]:
        """Send every due delivery once; returns the records as finished."""
        finished = []
        down: dict[str, Outcome] = {}
        touched: set[str] = set()
        for rec in self.outbox.claim_due(self.owner, self.lease_s, job_ids):
            touched.add(rec["job_id"])
            outcome = down.get(rec["destination"]) or self._send(rec)
            if outcome.result == TRANSIENT:
                down[rec["destination"]] = outcome
            result = self.outbox.finish(rec, self.owner, outcome.result, outcome.message,
                                        retry_base_s=self.settings.dicom_retry_base_s,
                                        retry_max_s=self.settings.dicom_retry_max_s,
                                        max_attempts=self.settings.dicom_max_attempts)
            if result is None:
                continue
            finished.append(result)
            self._log(result)
        for job_id in touched:
            self.mirror(job_id)
        return finished

    def _send(self, rec: dict) -> Outcome:
        peer = self.peers.get(rec["destination"])
        if peer is None:
            return Outcome(OUT_REFUSED, f"destination '{rec['destination']}' is not configured (P2SAM_DICOM_PEERS)")
        path = self.store.results_dir(rec["job_id"]) / rec["target"] / rec["artifact"]
        if not Path(path).is_file():
            return Outcome(OUT_REFUSED, "the artifact is gone (the job was purged)")
        self.outbox.note_sent(rec, self.owner)
        return send_file(path, peer, self.settings)

    def _log(self, r: dict) -> None:
        what = f"job {r['job_id']} {r['target']}/{r['artifact']} -> {r['destination']}"
        if r["state"] == DELIVERED:
            log.info("%s: delivered (attempt %d)", what, r["attempts"])
        elif r["state"] in (REFUSED, FAILED):
            log.warning("%s: %s: %s", what, r["state"], r["last_error"])
        else:
            log.info("%s: attempt %d failed (%s); %s", what, r["attempts"], r["last_error"], r["message"])
        if r["state"] in (DELIVERED, REFUSED, FAILED):
            self.audit(f"delivery.{r['state']}", job_id=r["job_id"], target=r["target"], artifact=r["artifact"],
                       destination=r["destination"], attempts=r["attempts"])

    def audit(self, action: str, **fields: Any) -> None:
        from service.audit import AuditLog

        if self._audit is None:
            self._audit = AuditLog(self.store.data_dir)
        self._audit.write("dicom-gateway", action, **fields)

    # --- the job's view
    def mirror(self, job_id: str) -> None:
        deliveries = [public(d) for d in self.outbox.for_job(job_id)]

        def change(r: JobRecord) -> None:
            r.deliveries = deliveries

        self.store.update(job_id, change)

    # --- loop
    def run_once(self) -> list[dict]:
        self.sweep_jobs()
        return self.send_due()

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # keep going: the next round retries
                log.warning("gateway round failed (%s)", type(exc).__name__, exc_info=exc)
            stop.wait(self.settings.dicom_send_interval_s)


__all__ = ["Gateway", "PeerError"]
