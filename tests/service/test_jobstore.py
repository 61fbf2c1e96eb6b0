"""The job store's guarantees: atomic records, guarded transitions, leases; on both backends, the
JSON files under the data directory and PostgreSQL (a real server: .ci/run starts it)."""

from __future__ import annotations

import multiprocessing as mp
import socket
import subprocess
import sys
import time

import pytest

from p2sam.jobstore import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore, new_id, process_owner
from tests.conftest import Backend


def _job(store: JobStore, **kw):
    return store.create({"id": new_id(), "uploads": [], **kw})


def test_a_terminal_state_is_never_left(tmp_path, make):
    store = make()
    job = _job(store)
    owner = process_owner()
    assert store.claim(job.id, owner, 60).state == RUNNING
    assert store.transition(job.id, SUCCEEDED, {RUNNING}, owner=owner) is not None
    for to in (FAILED, CANCELLED, SUCCEEDED):
        assert store.transition(job.id, to, {QUEUED, RUNNING}) is None
    assert store.claim(job.id, "elsewhere:1", 60) is None
    rec = store.get(job.id)
    assert rec.state == SUCCEEDED and rec.terminal_transitions == 1 and rec.refused_transitions == 3


def test_only_the_lease_holder_finishes(tmp_path, make):
    store = make()
    job = _job(store)
    store.claim(job.id, "host-a:1", 60)
    assert store.transition(job.id, SUCCEEDED, {RUNNING}, owner="host-b:2") is None
    assert store.claim(job.id, "host-b:2", 60) is None  # a live lease on another host is respected
    assert store.get(job.id).state == RUNNING


def _claim(data_dir: str, url: str | None, job_id: str, q, done) -> None:
    q.put(Backend(data_dir, url)().claim(job_id, process_owner(), 60) is not None)
    done.wait(60)  # stay alive: a claimant that exited holds a dead lease, which may rightly be taken over


def test_a_lease_its_own_process_left_behind_is_taken_over(tmp_path, make):
    """A job deferred mid-run (read-only volume) keeps its live lease; the same process, asked to run
    it again, takes it over at once; another live process still may not."""
    store = make()
    job = _job(store)
    store.claim(job.id, "host-a:1:x", 600)
    assert store.claim(job.id, "host-b:2:y", 600) is None
    again = store.claim(job.id, "host-a:1:x", 600)
    assert again is not None and again.attempts == 2 and again.lease.owner == "host-a:1:x"
    assert "left behind by this process" in again.transitions[-2].reason


def test_concurrent_claims_have_one_winner(tmp_path, make):
    store = make()
    job = _job(store)
    ctx = mp.get_context("spawn")
    q, done = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), make.url, job.id, q, done)) for _ in range(4)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=60) for _ in procs)
    done.set()
    for p in procs:
        p.join(60)
    assert results == [False, False, False, True]
    assert store.get(job.id).attempts == 1


def test_a_dead_workers_job_is_requeued_and_taken_over(tmp_path, make):
    store = make()
    job = _job(store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = f"{socket.gethostname()}:{dead.pid}:0badcafe"
    store.claim(job.id, owner, 3600)
    assert store.requeue_expired(3600) == [job.id]
    rec = store.claim(job.id, process_owner(), 3600)
    assert rec.attempts == 2 and [t.to for t in rec.transitions] == [QUEUED, RUNNING, QUEUED, RUNNING]


def test_heartbeats_keep_a_lease_and_silence_loses_it(tmp_path, make):
    store = make()
    job = _job(store)
    store.claim(job.id, "far-host:7", lease_timeout_s=60)
    assert store.heartbeat(job.id, "far-host:7", progress=0.5)
    assert store.requeue_expired(60) == []
    time.sleep(1.1)
    assert store.requeue_expired(1) == [job.id]
    assert not store.heartbeat(job.id, "far-host:7")


def test_purge_keeps_uploads_another_job_uses(tmp_path, make):
    store = make()
    shared, own = new_id(), new_id()
    for u in (shared, own):
        store.upload_dir(u).mkdir(parents=True)
    a = _job(store, uploads=[shared, own])
    _job(store, uploads=[shared])
    store.results_dir(a.id).mkdir()
    rec = store.purge(a.id, "test")
    assert rec.purged_at and rec.uploads_kept == [shared]
    assert store.upload_dir(shared).exists() and not store.upload_dir(own).exists()
    assert not store.results_dir(a.id).exists()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "x" * 32, "", "0" * 31])
def test_ids_never_become_paths(tmp_path, make, bad):
    store = make()
    assert store.get(bad) is None
    with pytest.raises(KeyError):
        store.results_dir(bad)


def test_a_database_that_does_not_answer_is_storage_unavailable_and_defers_the_job(tmp_path, pg_url):
    """The PostgreSQL store down: a 503-class error (never a 500), and a worker given a job then
    defers it (its message is retried) instead of dropping it."""
    from p2sam.errors import STORAGE_UNAVAILABLE, classify
    from p2sam.pgstore import PgJobStore, StoreUnavailable, close_pools
    from p2sam.runner import execute_job
    from p2sam.settings import Settings

    gone = "postgresql://postgres@127.0.0.1:1/test"
    try:
        with pytest.raises(StoreUnavailable) as down:
            PgJobStore(tmp_path, gone)
        assert classify(down.value) is STORAGE_UNAVAILABLE
        store = PgJobStore(tmp_path, pg_url)
        job = _job(store)
        store.url = gone  # the server goes away
        assert execute_job(job.id, store, Settings(data_dir=tmp_path)) == "deferred"
        assert PgJobStore(tmp_path, pg_url).get(job.id).state == QUEUED  # untouched: it runs when retried
    finally:
        close_pools(gone)


def test_the_postgres_store_holds_at_most_its_pool_of_connections(tmp_path, pg_url):
    """40 threads at once (the API's thread pool) share P2SAM_DATABASE_POOL_SIZE connections, and a
    read-modify-write that reads or writes again inside its change runs in its own transaction."""
    import threading
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    from p2sam.pgstore import PgJobStore

    name = f"p2sam_pool_{uuid.uuid4().hex[:8]}"
    store = PgJobStore(tmp_path, f"{pg_url}&application_name={name}", pool_size=3)
    jobs = [_job(store).id for _ in range(5)]
    seen, stop = [], threading.Event()

    def watch() -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while not stop.is_set():
                seen.append(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                         (name,)).fetchone()[0])

    def bump(i: int) -> None:
        def change(r):
            r.retries = r.retries + 1
            assert store.get(r.id).id == r.id  # a read inside the transaction: same connection

        store.update(jobs[i % len(jobs)], change)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(40) as ex:
        list(ex.map(bump, range(200)))
    stop.set()
    watcher.join()
    assert sum(store.get(j).retries for j in jobs) == 200  # no update lost
    assert seen and max(seen) <= 3, max(seen)
