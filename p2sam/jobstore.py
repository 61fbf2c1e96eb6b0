"""Job records: one small JSON file per job on the shared volume, used by the API and the workers.

Layout under ``data_dir``::

    jobs/<id>.json        the record (written atomically: temp file + os.replace)
    jobs/<id>.lock        fcntl lock taken for every read-modify-write of the record
    results/<id>/         run_job's output folder (one subfolder per target)
    uploads/<id>/         uploaded inputs (see service.uploads)
    idempotency/<h>.json  Idempotency-Key -> job / batch id (see service.submit)

State machine (every change is a guarded transition, recorded in ``transitions``)::

    queued -> running -> succeeded | failed | cancelled
    queued -> cancelled
    running -> queued      (the worker vanished: its lease expired; or a transient I/O error)

A terminal state is never left, so a job completes exactly once however often its message is
delivered. A worker *claims* a job (queued -> running, ``attempts`` + 1) and holds a lease it
renews with heartbeats; only the lease holder may finish the job. ``terminal_transitions`` and
``writes`` (per target, how many times its outputs were produced) make duplicates measurable.
Records hold upload ids and target names only: never patient names, IDs or file names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from .records import JobRecord, Lease, Published, Record, RecordError, Transition, load_record  # Record: a
# JobRecord or a BatchRecord, by the store's kind

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({QUEUED, RUNNING})

_ID = re.compile(r"^[0-9a-f]{32}$")
log = logging.getLogger("p2sam.jobstore")


def new_id() -> str:
    """A random job / upload id (32 hex digits; also the folder name)."""
    return uuid.uuid4().hex


def valid_id(value: str) -> bool:
    """True for ids this store issues (anything else never reaches a file path)."""
    return bool(_ID.match(value or ""))


_nonce: tuple[int, str] = (0, "")


def process_owner() -> str:
    """This process as a lease owner: 'host:pid:nonce' (the nonce tells apart a restarted
    container whose new process got the old pid)."""
    global _nonce
    if _nonce[0] != os.getpid():
        _nonce = (os.getpid(), uuid.uuid4().hex[:8])
    return f"{socket.gethostname()}:{os.getpid()}:{_nonce[1]}"


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` ('host:pid:nonce') is a process on this host that no longer exists.

    Owners on other hosts are never declared dead here (their heartbeat decides)."""
    parts = (owner or "").split(":")
    if len(parts) < 2:
        return False
    host, pid = parts[0], parts[1]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if owner == process_owner():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    """Write JSON to a temp file beside ``path`` and rename it into place (readers never see
    half a file); with ``durable`` the file is fsynced first."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent) for the with-block: the one lock of
    the file stores (job and batch records, API keys, Idempotency-Keys). fcntl: works across
    processes and, over NFSv4, across hosts sharing the volume."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class JobStore:
    """Job records under ``data_dir`` (safe across processes and hosts sharing the folder)."""

    def __init__(self, data_dir: str | Path, records: str = "jobs") -> None:
        """``records``: the folder of the records (``jobs``; :mod:`p2sam.batchstore` keeps
        batch records under ``batches`` with this same code)."""
        self.data_dir = Path(data_dir).resolve()
        self.kind = records
        self.jobs_dir = self.data_dir / records
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "results").mkdir(exist_ok=True)
        (self.data_dir / "uploads").mkdir(exist_ok=True)

    def now(self) -> float:
        """The clock of leases and transitions (seconds since the epoch): this host's here; the
        database's in :class:`p2sam.pgstore.PgJobStore`, so that hosts need no synchronised clocks."""
        return time.time()

    def sibling(self, records: str) -> "JobStore":
        """The same kind of store for another kind of record (``batches``)."""
        return JobStore(self.data_dir, records)

    def reachable(self) -> bool:
        """True when the records can be read and written (the file store: the volume, checked apart)."""
        return True

    # --- paths
    def record_path(self, job_id: str) -> Path:
        if not valid_id(job_id):
            raise KeyError(job_id)
        return self.jobs_dir / f"{job_id}.json"

    def results_dir(self, job_id: str) -> Path:
        if not valid_id(job_id):
            raise KeyError(job_id)
        return self.data_dir / "results" / job_id

    def upload_dir(self, upload_id: str) -> Path:
        if not valid_id(upload_id):
            raise KeyError(upload_id)
        return self.data_dir / "uploads" / upload_id

    @contextlib.contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """Exclusive lock on one job's record (:func:`file_lock` on ``jobs/<id>.lock``)."""
        with file_lock(self.jobs_dir / f"{job_id}.lock"):
            yield

    # --- reading
    def load(self, raw: Any) -> Record:
        """A stored record of this store's kind as its type (p2sam.records.load_record)."""
        return load_record(self.kind, raw)

    def load_listed(self, raws) -> list[Record]:
        """The records of a listing: one that cannot be read (written by a newer version, during
        a rolling upgrade) is left out with a warning instead of stopping every sweep and list."""
        out = []
        for raw in raws:
            try:
                out.append(self.load(raw))
            except RecordError as exc:
                log.warning("%s (left out of the listing)", exc)
        return out

    def get(self, job_id: str) -> Record | None:
        if not valid_id(job_id):
            return None
        try:
            return self.load(json.loads(self.record_path(job_id).read_text()))
        except FileNotFoundError:
            return None

    def all(self) -> Iterator[Record]:
        """Every record (oldest first by creation time)."""
        raws = []
        for path in self.jobs_dir.glob("*.json"):
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                raws.append(json.loads(path.read_text()))
        yield from sorted(self.load_listed(raws), key=lambda r: r.created_at)

    def by_state(self, *states: str) -> list[Record]:
        return [r for r in self.all() if r.state in states]

    # --- writing
    def create(self, record: Record | dict[str, Any]) -> Record:
        """Store a new record (state queued). Fills in the bookkeeping fields the caller left unset."""
        base = self._new_record(record)
        path = self.record_path(base.id)
        with self.locked(base.id):
            if path.exists():
                raise FileExistsError(base.id)
            write_json_atomic(path, base.to_json())
        return base

    def _new_record(self, record: Record | dict[str, Any]) -> Record:
        base = record.model_copy(deep=True) if isinstance(record, Record) else self.load(record)
        given = base.model_fields_set
        now = self.now()
        for name in ("created_at", "updated_at"):
            if name not in given:
                setattr(base, name, now)
        if "transitions" not in given:
            base.transitions = [Transition(from_=None, to=QUEUED, at=now, by=process_owner(), reason="submitted")]
        return base

    def update(self, job_id: str, change: Callable[[Record], bool | None], durable: bool = True,
               skip_locked: bool = False) -> Record | None:
        """Read-modify-write under the job's lock. ``change`` edits the record in place (attribute
        assignments, each validated) and returns False to leave it unchanged. Returns the record as
        stored, None if absent. (``skip_locked``: honoured by the PostgreSQL store; here the lock is
        always waited for.)"""
        with self.locked(job_id):
            record = self.get(job_id)
            if record is None:
                return None
            if change(record) is False:
                return record
            record.updated_at = self.now()
            write_json_atomic(self.record_path(job_id), record.to_json(), durable=durable)
            return record

    def transition(self, job_id: str, to: str, allowed_from: set[str] | frozenset[str], *, by: str | None = None,
                   reason: str = "", owner: str | None = None, **fields: Any) -> Record | None:
        """Move the job to ``to`` if its state is in ``allowed_from`` (and, with ``owner``, only
        while that owner holds the lease), setting ``fields`` too. Returns the new record, or None
        when refused."""
        done: dict[str, bool] = {"ok": False}

        def change(r: Record) -> bool:
            if r.state not in allowed_from or (owner is not None and _lease_owner(r) != owner):
                if to in TERMINAL:
                    r.refused_transitions += 1
                    return True
                return False
            now = self.now()
            r.transitions.append(Transition(from_=r.state, to=to, at=now, by=by or process_owner(), reason=reason))
            r.state = to
            if to in TERMINAL:
                r.terminal_transitions += 1
                r.finished_at = now
                r.lease = None
                if to != SUCCEEDED:
                    r.stage = to
            for name, value in fields.items():
                setattr(r, name, value)
            done["ok"] = True
            return True

        record = self.update(job_id, change)
        return record if done["ok"] else None

    # --- leases (which worker runs a job)
    def lease_expired(self, record: Record, lease_timeout_s: float) -> bool:
        if record.state != RUNNING:
            return False
        if record.lease is None:
            return True
        return owner_is_dead(record.lease.owner) or self.now() - record.lease.heartbeat_at > lease_timeout_s

    def claim(self, job_id: str, owner: str, lease_timeout_s: float) -> Record | None:
        """queued -> running for ``owner`` (or take over a running job whose lease expired, or
        whose lease ``owner`` itself holds: a process runs one job at a time, so such a lease was
        left behind, by a job deferred while the data volume was read-only).
        Returns the record when claimed; None for a job that is absent, finished, or held by a
        live worker (a redelivered message for it is then a no-op)."""
        claimed: dict[str, bool] = {"ok": False}

        def change(r: Record) -> bool:
            state = r.state
            left_behind = state == RUNNING and _lease_owner(r) == owner
            if state == QUEUED or (state == RUNNING and (left_behind or self.lease_expired(r, lease_timeout_s))):
                now = self.now()
                if state == RUNNING:
                    why = "left behind by this process" if left_behind else "expired"
                    r.transitions.append(Transition(from_=RUNNING, to=QUEUED, at=now, by=owner,
                                                    reason=f"lease of {_lease_owner(r)} {why}"))
                r.transitions.append(Transition(from_=QUEUED, to=RUNNING, at=now, by=owner, reason="claimed"))
                r.state, r.stage, r.message = RUNNING, "starting", "starting"
                r.attempts += 1
                r.lease = Lease(owner=owner, heartbeat_at=now, since=now)
                r.started_at = r.started_at or now
                claimed["ok"] = True
                return True
            return False

        record = self.update(job_id, change)
        return record if claimed["ok"] else None

    def heartbeat(self, job_id: str, owner: str, **fields: Any) -> bool:
        """Renew ``owner``'s lease (and store progress fields). False once the lease is lost."""
        held = {"ok": False}

        def change(r: Record) -> bool:
            if r.state != RUNNING or r.lease is None or r.lease.owner != owner:
                return False
            r.lease.heartbeat_at = self.now()
            for name, value in fields.items():
                setattr(r, name, value)
            held["ok"] = True
            return True

        self.update(job_id, change, durable=False)
        return held["ok"]

    def requeue_expired(self, lease_timeout_s: float, by: str | None = None) -> list[str]:
        """running -> queued for every job whose worker is gone; returns their ids."""
        requeued = []
        for r in self.by_state(RUNNING):
            if not self.lease_expired(r, lease_timeout_s):
                continue
            old = _lease_owner(r)
            flag = {"ok": False}

            def change(rec: Record, old=old, flag=flag) -> bool:
                if rec.state != RUNNING or _lease_owner(rec) != old or not self.lease_expired(rec, lease_timeout_s):
                    return False
                rec.transitions.append(Transition(from_=RUNNING, to=QUEUED, at=self.now(), by=by or process_owner(),
                                                  reason=f"lease of {old} expired"))
                rec.state, rec.stage, rec.message, rec.lease = QUEUED, "queued", "re-queued: its worker stopped", None
                rec.published = Published(count=rec.published.count)
                flag["ok"] = True
                return True

            self.update(r.id, change, skip_locked=True)  # a row being written is alive: next sweep
            if flag["ok"]:
                requeued.append(r.id)
        return requeued

    # --- deleting patient data
    def purge(self, job_id: str, reason: str) -> Record | None:
        """Delete the job's results and its uploads (except uploads another job not yet purged
        still uses); the record stays as a tombstone (ids and states only) with ``purged_at``."""
        record = self.get(job_id)
        if record is None:
            return None
        in_use = {u for r in self.all() if r.id != job_id and r.purged_at is None for u in getattr(r, "uploads", [])}
        shutil.rmtree(self.results_dir(job_id), ignore_errors=True)
        kept = []
        for upload_id in getattr(record, "uploads", []):
            if upload_id in in_use:
                kept.append(upload_id)
            elif valid_id(upload_id):
                shutil.rmtree(self.upload_dir(upload_id), ignore_errors=True)

        def change(r: Record) -> None:
            r.purged_at, r.purge_reason, r.purge_requested, r.summary = self.now(), reason, False, None
            if isinstance(r, JobRecord):
                r.results, r.uploads_kept = None, kept

        return self.update(job_id, change)


def _lease_owner(record: Record) -> str | None:
    return record.lease.owner if record.lease is not None else None


def open_store(settings, records: str = "jobs") -> JobStore:
    """The job store the settings name: PostgreSQL with P2SAM_DATABASE_URL, else the JSON files
    under P2SAM_DATA_DIR (artifacts and uploads stay on the data volume either way)."""
    if getattr(settings, "database_url", None):
        from .pgstore import PgJobStore

        return PgJobStore(settings.data_dir, settings.database_url, records, settings.database_pool_size)
    return JobStore(settings.data_dir, records)


def is_transient_io_error(exc: BaseException) -> bool:
    """Errors worth retrying: lost connections, timeouts, stale NFS handles. Never bad input,
    never a full disk, never out of memory."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in {errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EIO,
                                                      errno.ECONNRESET, errno.ECONNREFUSED, errno.EHOSTUNREACH}
