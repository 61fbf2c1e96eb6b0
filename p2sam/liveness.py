"""Can a worker take work? Its pool process says so: ``data_dir/workers/<worker name>.json``.

A Celery worker's parent process answers pings even while its pool process is dead or still
starting (loading the model), so a ping alone said "ready" for a worker that could run
nothing. The pool process writes ``starting`` when it begins ``worker_process_init`` and
``ready`` (renewed every few seconds by a daemon thread) once the model is loaded; a
killed pool process is seen dead at once on its own host (its pid is gone), elsewhere once it
stops renewing the entry, and its replacement writes ``starting``. The API's
/readyz counts a worker only when it answers a ping *and* its pool process is ready and fresh.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from .jobstore import owner_is_dead, process_owner, write_json_atomic

log = logging.getLogger("p2sam.worker")

BEAT_S = 3.0
FRESH_S = 20.0  # a ready state older than this is a pool process that stopped renewing it


def _path(data_dir: Path, worker: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "@.-_" else "_" for c in worker)[:200]
    return Path(data_dir) / "workers" / f"{safe}.json"


def mark(data_dir: Path, worker: str, state: str) -> None:
    """Record this pool process's state (starting / ready); never raises (a full disk must not stop a worker)."""
    path = _path(data_dir, worker)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"worker": worker, "state": state, "owner": process_owner(), "at": time.time()}, durable=False)
    except OSError as exc:
        log.warning("could not record the worker's state (%s)", type(exc).__name__)


def keep_ready(data_dir: Path, worker: str) -> threading.Thread:
    """Mark ``ready`` now and every BEAT_S seconds from a daemon thread (it dies with the process)."""
    def beat() -> None:
        while True:
            mark(data_dir, worker, "ready")
            time.sleep(BEAT_S)

    thread = threading.Thread(target=beat, name="p2sam-liveness", daemon=True)
    thread.start()
    return thread


def state(data_dir: Path, worker: str, now: float | None = None) -> str:
    """'ready', 'starting', 'dead' (its pool process, on this host, is gone), 'stale' (ready, not
    renewed: a pool process elsewhere that stopped) or 'unknown' (never recorded)."""
    try:
        entry = json.loads(_path(data_dir, worker).read_text())
    except (OSError, ValueError):
        return "unknown"
    if owner_is_dead(entry.get("owner")):
        return "dead"
    if entry.get("state") == "ready" and (now or time.time()) - float(entry.get("at", 0)) > FRESH_S:
        return "stale"
    return str(entry.get("state", "unknown"))
