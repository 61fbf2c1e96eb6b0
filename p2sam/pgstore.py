"""Job and batch records in PostgreSQL (P2SAM_DATABASE_URL): the store for several hosts.

The same records, transitions and leases as :class:`p2sam.jobstore.JobStore` (whose methods all
build on ``get`` / ``all`` / ``create`` / ``update``, overridden here), without its two
cross-host assumptions: a read-modify-write holds the row's lock (``SELECT ... FOR UPDATE``)
instead of an fcntl lock over NFS, and leases and transitions are timed by the database's clock
(``clock_timestamp()``) instead of each host's. The lease sweep skips rows another transaction
holds (``FOR UPDATE SKIP LOCKED``: a job whose heartbeat is being written is alive). Uploads,
results and artifacts stay on the shared data volume.

One table, created when missing::

    p2sam_records(kind text, id text, state text, created_at double precision, record jsonb,
                  PRIMARY KEY (kind, id))

``kind`` is ``jobs`` or ``batches``. Connections come from one pool per process and database
(psycopg_pool; at most P2SAM_DATABASE_POOL_SIZE, so the API's thread pool cannot exhaust the
server's max_connections; a forked Celery pool process opens its own); a with-block nested in a
read-modify-write of the same thread reuses that transaction's connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from .jobstore import JobStore, Record, valid_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS p2sam_records (
    kind text NOT NULL,
    id text NOT NULL,
    state text,
    created_at double precision NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS p2sam_records_state ON p2sam_records (kind, state);
"""
_NOW = "extract(epoch from clock_timestamp())::double precision"


class StoreUnavailable(ConnectionError):
    """The database cannot be reached (a ConnectionError: retried as transient where work is retried)."""


_POOLS: dict[tuple[int, str], Any] = {}
_POOLS_LOCK = threading.Lock()
WAIT_S = 5.0  # how long a request waits for a connection (the server down: then StoreUnavailable)


def _pool(url: str, size: int):
    """This process's connection pool for ``url`` (a forked child makes its own)."""
    from psycopg_pool import ConnectionPool

    key = (os.getpid(), url)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = ConnectionPool(url, min_size=1, max_size=max(1, size), open=True, timeout=WAIT_S, name="p2sam",
                                  kwargs={"autocommit": True, "connect_timeout": 5})
            _POOLS[key] = pool
    return pool


def close_pools(url: str | None = None) -> None:
    """Close this process's pools (of ``url`` only, if given): a pool of a server gone for good
    would otherwise keep trying to connect in the background."""
    with _POOLS_LOCK:
        for key in [k for k in _POOLS if k[0] == os.getpid() and url in (None, k[1])]:
            _POOLS.pop(key).close()


class PgJobStore(JobStore):
    def __init__(self, data_dir: str | Path, url: str, records: str = "jobs", pool_size: int = 8) -> None:
        super().__init__(data_dir, records)  # the folders of uploads, results and artifacts
        self.url, self.kind, self.pool_size = url, records, pool_size
        self._local = threading.local()
        with self._connection() as conn:
            conn.execute(SCHEMA)

    def sibling(self, records: str) -> "PgJobStore":
        return PgJobStore(self.data_dir, self.url, records, self.pool_size)

    # --- connections
    @contextlib.contextmanager
    def _connection(self):
        """A connection for one with-block: this thread's open transaction's, else one from the
        pool; the server unreachable is a StoreUnavailable."""
        import psycopg
        from psycopg_pool import PoolTimeout

        current = getattr(self._local, "tx", None)
        if current is not None:
            yield current
            return
        try:
            with _pool(self.url, self.pool_size).connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"job store database unreachable ({type(exc).__name__})") from None

    def reachable(self) -> bool:
        try:
            with self._connection() as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    def now(self) -> float:
        clock = getattr(self._local, "clock", None)  # inside update(): the transaction's reading
        if clock is not None:
            return clock
        with self._connection() as conn:
            return conn.execute(f"SELECT {_NOW}").fetchone()[0]

    # --- reading
    def get(self, job_id: str) -> Record | None:
        if not valid_id(job_id):
            return None
        with self._connection() as conn:
            row = conn.execute("SELECT record FROM p2sam_records WHERE kind = %s AND id = %s",
                               (self.kind, job_id)).fetchone()
        return self.load(row[0]) if row else None

    def all(self) -> Iterator[Record]:
        with self._connection() as conn:
            rows = conn.execute("SELECT record FROM p2sam_records WHERE kind = %s ORDER BY created_at",
                                (self.kind,)).fetchall()
        yield from self.load_listed(r[0] for r in rows)

    def by_state(self, *states: str) -> list[Record]:
        with self._connection() as conn:
            rows = conn.execute("SELECT record FROM p2sam_records WHERE kind = %s AND state = ANY(%s) ORDER BY created_at",
                                (self.kind, list(states))).fetchall()
        return self.load_listed(r[0] for r in rows)

    # --- writing
    def create(self, record: Record | dict[str, Any]) -> Record:
        from psycopg.errors import UniqueViolation

        base = self._new_record(record)
        if not valid_id(base.id):
            raise KeyError(base.id)
        try:
            with self._connection() as conn:
                conn.execute("INSERT INTO p2sam_records (kind, id, state, created_at, record) VALUES (%s, %s, %s, %s, %s)",
                             (self.kind, base.id, base.state, base.created_at, _jsonb(base)))
        except UniqueViolation:
            raise FileExistsError(base.id) from None
        return base

    def update(self, job_id: str, change: Callable[[Record], bool | None], durable: bool = True,
               skip_locked: bool = False) -> Record | None:
        """Read-modify-write in one transaction holding the row's lock (``skip_locked``: a row
        another transaction holds is left alone: returns None)."""
        if not valid_id(job_id):
            return None
        lock = "FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE"
        with self._connection() as conn, conn.transaction():
            row = conn.execute(f"SELECT record, {_NOW} FROM p2sam_records WHERE kind = %s AND id = %s {lock}",
                               (self.kind, job_id)).fetchone()
            if row is None:
                return None
            record, clock = self.load(row[0]), row[1]
            outer = getattr(self._local, "clock", None), getattr(self._local, "tx", None)
            self._local.clock, self._local.tx = clock, conn  # change() may read or write in this transaction
            try:
                if change(record) is False:
                    return record
                record.updated_at = clock
            finally:
                self._local.clock, self._local.tx = outer
            conn.execute("UPDATE p2sam_records SET record = %s, state = %s WHERE kind = %s AND id = %s",
                         (_jsonb(record), record.state, self.kind, job_id))
            return record


def _jsonb(record: Record) -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb(record.to_json(), dumps=lambda v: json.dumps(v, separators=(",", ":")))


__all__ = ["PgJobStore", "StoreUnavailable", "SCHEMA", "close_pools"]
