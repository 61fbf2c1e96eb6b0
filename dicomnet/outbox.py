"""The persistent outbox: one JSON record per (artifact, destination) delivery on the data volume.

Layout under ``data_dir``::

    outbox/<job id>/<delivery id>.json   the record (written atomically)
    outbox/<job id>/.lock                fcntl lock for every read-modify-write of that job's deliveries

A delivery id is a hash of (job, target, artifact, destination), so enqueueing the same thing
twice (a restarted gateway, a repeated sweep) finds the existing record. States::

    pending -> sending -> delivered              (acknowledged: never sent again)
                       -> refused                (the destination said no: not retried; re-send on request)
                       -> pending                (down / timed out: retried after a backoff)
                       -> failed                 (still down after P2SAM_DICOM_MAX_ATTEMPTS)
    sending -> pending   (the sender died mid-delivery: its lease expired)

A sender *claims* a delivery (pending -> sending, ``attempts`` + 1, a lease with its process id)
before it sends, and only the lease holder records the outcome. A sender killed after the
destination stored the instance but before the outcome was recorded leaves a ``sending`` record
whose lease expires; it is sent again with the same SOP Instance UID, which a PACS stores once
(an instance is identified by its UID), so the destination still holds it exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from p2sam.jobstore import owner_is_dead, valid_id, write_json_atomic

PENDING, SENDING, DELIVERED, REFUSED, FAILED = "pending", "sending", "delivered", "refused", "failed"
FINAL = frozenset({DELIVERED, REFUSED, FAILED})
Record = dict[str, Any]

#: what is sent of each target (the result kinds of p2sam.outputs): the RTSTRUCT and both SEGs
SENT_KINDS = ("rtstruct", "seg", "probability_seg")


def delivery_id(job_id: str, target: str, artifact: str, destination: str) -> str:
    return hashlib.sha256(f"{job_id}\0{target}\0{artifact}\0{destination}".encode()).hexdigest()[:32]


class Outbox:
    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir).resolve() / "outbox"
        self.root.mkdir(parents=True, exist_ok=True)
        since = self.root / ".since"
        if not since.exists():  # jobs finished before the outbox existed are not sent by default
            since.write_text(f"{time.time()}\n")
        self.since = float(since.read_text().strip() or 0)

    # --- paths and locking
    def _job_dir(self, job_id: str) -> Path:
        if not valid_id(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    @contextlib.contextmanager
    def locked(self, job_id: str) -> Iterator[Path]:
        folder = self._job_dir(job_id)
        folder.mkdir(exist_ok=True)
        with open(folder / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # --- reading
    def for_job(self, job_id: str) -> list[Record]:
        if not valid_id(job_id) or not self._job_dir(job_id).is_dir():
            return []
        out = []
        for path in self._job_dir(job_id).glob("*.json"):
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                out.append(json.loads(path.read_text()))
        return sorted(out, key=lambda d: (d["target"], d["artifact"], d["destination"]))

    def jobs(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and valid_id(p.name))

    def all(self) -> Iterator[Record]:
        for job_id in self.jobs():
            yield from self.for_job(job_id)

    # --- writing
    def add(self, job_id: str, target: str, artifact: str, kind: str, destination: str, protocol: str,
            sop_class_uid: str = "", sop_instance_uid: str = "") -> tuple[Record, bool]:
        """The delivery of one artifact to one destination (created pending if new); (record, created)."""
        did = delivery_id(job_id, target, artifact, destination)
        with self.locked(job_id) as folder:
            path = folder / f"{did}.json"
            if path.exists():
                return json.loads(path.read_text()), False
            now = time.time()
            record = {"id": did, "job_id": job_id, "target": target, "artifact": artifact, "kind": kind,
                      "destination": destination, "protocol": protocol, "sop_class_uid": sop_class_uid,
                      "sop_instance_uid": sop_instance_uid, "state": PENDING, "attempts": 0, "sends": 0,
                      "next_at": now, "last_error": None, "message": "waiting to be sent", "lease": None,
                      "created_at": now, "updated_at": now, "delivered_at": None, "history": []}
            write_json_atomic(path, record)
            return record, True

    def _update(self, job_id: str, change: Callable[[Record], bool | None], only: set[str] | None = None) -> list[Record]:
        """Apply ``change`` to the job's deliveries (those in ``only``, or all) under its lock;
        returns the records ``change`` did not decline (returned False for)."""
        changed = []
        with self.locked(job_id) as folder:
            for path in sorted(folder.glob("*.json")):
                if only is not None and path.stem not in only:
                    continue
                try:
                    record = json.loads(path.read_text())
                except (FileNotFoundError, json.JSONDecodeError):
                    continue
                if change(record) is False:
                    continue
                record["updated_at"] = time.time()
                write_json_atomic(path, record)
                changed.append(record)
        return changed

    def lease_expired(self, record: Record, lease_s: float, now: float | None = None) -> bool:
        lease = record.get("lease") or {}
        if record["state"] != SENDING:
            return False
        return not lease or owner_is_dead(lease.get("owner")) or (now or time.time()) - lease.get("at", 0) > lease_s

    def claim_due(self, owner: str, lease_s: float, job_ids: list[str] | None = None) -> list[Record]:
        """Claim every delivery that is due (pending past its next attempt time, or sending with an
        expired lease) for ``owner``; returns them (state sending, attempts + 1)."""
        claimed: list[Record] = []
        for job_id in job_ids if job_ids is not None else self.jobs():
            now = time.time()

            def change(r: Record, now: float = now) -> bool:
                due = r["state"] == PENDING and r["next_at"] <= now
                if r["state"] == SENDING and self.lease_expired(r, lease_s, now):
                    r["history"].append({"at": now, "event": "lease expired", "by": (r.get("lease") or {}).get("owner")})
                    due = True
                if not due:
                    return False
                r.update(state=SENDING, attempts=r["attempts"] + 1, lease={"owner": owner, "at": now}, message="sending")
                return True

            claimed += self._update(job_id, change)
        return claimed

    def note_sent(self, record: Record, owner: str) -> None:
        """Count a transmission (before the network call: ``sends`` counts every try on the wire)."""
        def change(r: Record) -> bool:
            if r["state"] != SENDING or (r.get("lease") or {}).get("owner") != owner:
                return False
            r["sends"] = r.get("sends", 0) + 1
            r["lease"]["at"] = time.time()
            return True

        self._update(record["job_id"], change, {record["id"]})

    def finish(self, record: Record, owner: str, result: str, message: str, *, retry_base_s: float,
               retry_max_s: float, max_attempts: int) -> Record | None:
        """Record the outcome of the lease holder's attempt: ok / refused / transient."""
        done: list[Record] = []

        def change(r: Record) -> bool:
            if r["state"] != SENDING or (r.get("lease") or {}).get("owner") != owner:
                return False
            now = time.time()
            r["lease"] = None
            r["history"].append({"at": now, "event": result, "attempt": r["attempts"], "message": message})
            del r["history"][:-20]
            if result == "ok":
                r.update(state=DELIVERED, delivered_at=now, message=message, last_error=None)
            elif result == "refused":
                r.update(state=REFUSED, message="refused by the destination (not retried; POST .../deliveries re-sends)",
                         last_error=message)
            elif r["attempts"] >= max_attempts:
                r.update(state=FAILED, message=f"given up after {r['attempts']} attempts", last_error=message)
            else:
                wait = min(retry_max_s, retry_base_s * 2 ** (r["attempts"] - 1))
                r.update(state=PENDING, next_at=now + wait, last_error=message,
                         message=f"retry {r['attempts'] + 1} in {wait:.0f} s")
            done.append(r)
            return True

        self._update(record["job_id"], change, {record["id"]})
        return done[0] if done else None

    def resend(self, job_id: str, ids: list[str] | None = None, include_delivered: bool = False) -> list[Record]:
        """Put refused / failed (and, with ``include_delivered``, delivered) deliveries back to
        pending, due now, with a fresh attempt count. Deliveries being sent are left alone."""
        reset_from = {REFUSED, FAILED, PENDING} | ({DELIVERED} if include_delivered else set())

        def change(r: Record) -> bool:
            if r["state"] not in reset_from:
                return False
            now = time.time()
            r["history"].append({"at": now, "event": "re-send requested", "from": r["state"]})
            r.update(state=PENDING, attempts=0, next_at=now, message="re-send requested", delivered_at=None)
            return True

        return self._update(job_id, change, set(ids) if ids is not None else None)

    def discard(self, job_id: str) -> None:
        import shutil

        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)


def public(r: Record) -> Record:
    """A delivery as the job shows it."""
    keys = ("id", "target", "artifact", "destination", "protocol", "state", "attempts", "last_error", "message",
            "sop_instance_uid")
    out = {k: r.get(k) for k in keys}
    out["next_attempt_at"] = r["next_at"] if r["state"] == PENDING else None
    out["delivered_at"] = r.get("delivered_at")
    out["updated_at"] = r.get("updated_at")
    return out
