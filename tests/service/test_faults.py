"""Faults with real processes: a worker killed with SIGKILL mid-job, Redis restarted while jobs
wait, and the same submission sent twice with one Idempotency-Key."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery import Celery

from .client import client, job_body, record, submit, wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def _wait_record(stack, job_id, check, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = record(stack.data_dir, job_id)
        if check(rec):
            return rec
        time.sleep(0.2)
    raise AssertionError(f"job {job_id}: condition not met; record {rec}")


def _wait_not_ready(stack, timeout=30):
    """/readyz answers 503 (problem+json) once no worker answers a ping (cached a few seconds)."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        r = httpx.get(f"{stack.url}/readyz")
        if r.status_code == 503:
            assert r.headers["content-type"] == "application/problem+json" and r.json()["checks"]["workers"] == 0
            return
        time.sleep(0.5)
    raise AssertionError("/readyz still ready without workers")


def test_kill9_worker_mid_job_completes_exactly_once(stack, api, uploaded):
    """SIGKILL the worker (and its pool child) after the first of four targets is written: a new
    worker finishes the job, skipping that target; one terminal transition, one set of outputs."""
    body = job_body(uploaded["prior"], [uploaded["followup"]] * 4, outputs=["nifti", "rtstruct"])
    job = submit(api, body)
    _wait_record(stack, job["id"], lambda r: r["state"] == "running" and sum(r["writes"].values()) >= 1)
    (victim,) = stack.live_workers()
    victim.kill9()
    rec = record(stack.data_dir, job["id"])
    # orphaned mid-job (the API may already have re-queued it: the worker's pid is gone)
    assert rec["state"] in ("running", "queued") and sum(rec["writes"].values()) < 4

    stack.start_worker()
    done = wait(api, job["id"], timeout=240)
    assert done["state"] == "succeeded", done
    rec = record(stack.data_dir, job["id"])
    assert rec["terminal_transitions"] == 1 and rec["refused_transitions"] == 0
    assert [t["to"] for t in rec["transitions"]].count("succeeded") == 1
    assert rec["attempts"] == 2
    assert sum("expired" in t["reason"] for t in rec["transitions"]) == 1  # recovered once, from the lease
    assert rec["writes"] == {f"visit{i}": 1 for i in range(1, 5)}  # the first target was not redone
    out = stack.data_dir / "results" / job["id"]
    assert sorted(p.name for p in out.iterdir()) == [f"visit{i}" for i in range(1, 5)]  # no temp leftovers

    # A redelivered message for the finished job (e.g. after the visibility timeout) is a no-op.
    app = Celery(broker=stack.redis.url)
    app.send_task("p2sam.run_job", args=[job["id"]], queue="interactive")
    worker_log = stack.live_workers()[0]
    deadline = time.time() + 30
    while time.time() < deadline and worker_log.log().count(f"job {job['id']}: nothing to do") < 1:
        time.sleep(0.2)
    assert f"job {job['id']}: nothing to do" in worker_log.log()
    again = record(stack.data_dir, job["id"])
    assert again["terminal_transitions"] == 1 and again["attempts"] == 2 and again["writes"] == rec["writes"]


def test_redis_restart_with_queued_jobs_loses_nothing(stack, api, uploaded):
    """Workers stopped, three jobs queued, Redis restarted empty (no persistence): the API
    re-enqueues them from the job store and they all complete once a worker is back."""
    for w in stack.live_workers():
        w.stop()
    _wait_not_ready(stack)
    jobs = [submit(api, job_body(uploaded["prior"], [uploaded["followup"]], n_samples=k)) for k in range(3)]
    for j in jobs:
        _wait_record(stack, j["id"], lambda r: r["published"]["count"] >= 1)
    first_epoch = {record(stack.data_dir, j["id"])["published"]["epoch"] for j in jobs}

    stack.redis.restart()  # SIGKILL, no persistence: the queue lists are gone
    for j in jobs:
        _wait_record(stack, j["id"], lambda r: r["published"]["count"] >= 2, timeout=60)
    stack.start_worker()
    for j in jobs:
        assert wait(api, j["id"], timeout=240)["state"] == "succeeded"
        rec = record(stack.data_dir, j["id"])
        assert rec["published"]["epoch"] not in first_epoch  # re-published to the new Redis
        assert rec["terminal_transitions"] == 1 and rec["attempts"] == 1


def test_same_idempotency_key_same_body_is_one_job(stack, api, uploaded):
    body = job_body(uploaded["prior"], [uploaded["followup"]])
    first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-4711"})
    assert first.status_code == 202
    again = api.post("/v1/jobs", json=dict(reversed(list(body.items()))), headers={"Idempotency-Key": "order-4711"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == f"/v1/jobs/{first.json()['id']}"
    changed = api.post("/v1/jobs", json={**body, "n_samples": 3}, headers={"Idempotency-Key": "order-4711"})
    assert changed.status_code == 409
    assert changed.headers["content-type"] == "application/problem+json"
    assert changed.json()["job_id"] == first.json()["id"]
    # Keys are per API key: another system's "order-4711" is its own job.
    with client(stack.url, stack.keys["admin"]) as admin:
        other = admin.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-4711"})
        assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert wait(api, first.json()["id"])["state"] == "succeeded"


def test_concurrent_duplicates_make_one_job(stack, api, uploaded):
    body = job_body(uploaded["prior"], [uploaded["followup"]], n_samples=1)

    def post(_):
        return api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-storm"})

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(post, range(6)))
    assert sorted(r.status_code for r in responses) == [200] * 5 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    assert wait(api, responses[0].json()["id"])["state"] == "succeeded"
