"""The compose default, job records in PostgreSQL (P2SAM_DATABASE_URL), with real processes: the
API, two Celery workers and Redis. Jobs run and finish exactly once, a worker killed with kill -9
mid-job costs nothing, and no record is written as a file on the data volume."""

from __future__ import annotations

import time

import pytest

from bench.stack import Stack, parent_pid
from p2sam.pgstore import PgJobStore
from service.auth import KeyStore

from .client import client, job_body, submit, upload_files, upload_zip, wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_jobs_on_postgres_survive_a_killed_worker(tmp_path, model_dir, redis_server, pg_url, small_case):
    broker = redis_server.url.rsplit("/", 1)[0] + "/4"  # its own database: the session stack's worker stays out
    s = Stack(tmp_path / "stack", model_dir, broker, min_island_mm2=0, database_url=pg_url, lease_timeout_s=10)
    try:
        s.start_api()
        first, second = s.start_worker(), s.start_worker()
        key = KeyStore(s.data_dir).create("planning", ["submit", "read"])
        with client(s.url, key) as c:
            assert c.get("/readyz").json()["checks"]["job_store"] is True
            prior = upload_zip(c, small_case["prior"], small_case["prior_rtstruct"])
            followup = upload_files(c, small_case["followup1"])
            jobs = [submit(c, job_body(prior, [followup], n_samples=4)) for _ in range(4)]
            store = PgJobStore(s.data_dir, pg_url)
            deadline = time.time() + 120
            while not any(r.state == "running" for r in store.by_state("running")):
                assert time.time() < deadline, "no job started"
                time.sleep(0.1)
            running = store.by_state("running")[0]
            victim = next(w for w in (first, second) if w.pid == parent_pid(int(running.lease.owner.split(":")[1])))
            victim.kill9()
            done = [wait(c, j["id"], timeout=300) for j in jobs]
        assert [d["state"] for d in done] == ["succeeded"] * 4, done
        for j in jobs:
            rec = store.get(j["id"])
            assert rec.terminal_transitions == 1 and all(n == 1 for n in rec.writes.values()), rec
        assert store.get(running.id).attempts == 2  # taken over after its worker died
        assert not list((s.data_dir / "jobs").glob("*.json"))  # the records live in the database only
    finally:
        s.stop()

