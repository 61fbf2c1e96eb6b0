"""A pool process killed with SIGKILL mid-job on a slow machine: the worker recovers by itself
(its replacement pool process may take longer than Celery's default 4 s to load the model),
the job completes on the SAME worker, and /readyz is not ready while that worker cannot take
work (its parent still answers pings meanwhile)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from .client import job_body, record, submit, wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # (the session stack may start within it)

SLOW_START_S = 8  # twice Celery's default worker_proc_alive_timeout
SLOW = str(Path(__file__).parent / "slow_start")


def _ready(stack) -> tuple[int, dict]:
    r = httpx.get(f"{stack.url}/readyz", timeout=30)
    return r.status_code, r.json()


def _wait_ready(stack, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _ready(stack)[0] == 200:
            return
        time.sleep(0.5)
    raise AssertionError(f"/readyz not ready after {timeout} s: {_ready(stack)}")


def test_killed_pool_process_recovers_on_the_same_worker(stack, uploaded):
    from .client import client

    for w in stack.live_workers():
        w.stop()
    env = {"PYTHONPATH": os.pathsep.join([SLOW, os.environ.get("PYTHONPATH", "")]),
           "P2SAM_TEST_SLOW_START_S": str(SLOW_START_S)}
    worker = stack.start_worker(env=env)
    try:
        # its first pool process takes SLOW_START_S to start: not ready until then
        _wait_ready(stack, timeout=300)
        with client(stack.url, stack.keys["planning"]) as api:
            job = submit(api, job_body(uploaded["prior"], [uploaded["followup"]] * 3, outputs=["nifti"]))
            deadline = time.time() + 120
            while time.time() < deadline:
                rec = record(stack.data_dir, job["id"])
                if rec["state"] == "running" and sum(rec["writes"].values()) >= 1:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"the job did not start on the slow-starting worker: {rec['state']}")
            child = int(rec["lease"]["owner"].split(":")[1])
            assert child != worker.pid
            os.kill(child, signal.SIGKILL)  # the pool process only: the worker's parent lives on

            not_ready = None
            deadline = time.time() + 10
            while time.time() < deadline and not_ready is None:
                status, body = _ready(stack)
                if status == 503:
                    not_ready = body
                time.sleep(0.3)
            assert not_ready is not None, "/readyz said ready while the worker's pool process was dead or starting"
            assert not_ready["checks"]["workers"] == 0 and not_ready["checks"].get("workers_starting") == 1

            done = wait(api, job["id"], timeout=240)
        assert done["state"] == "succeeded", done
        assert worker.alive() and stack.live_workers() == [worker]  # the same worker, no other one
        rec = record(stack.data_dir, job["id"])
        assert rec["attempts"] == 2 and rec["terminal_transitions"] == 1
        assert sum(rec["writes"].values()) == 3
        log = worker.log()
        assert "Timed out waiting for UP message" not in log
        _wait_ready(stack, timeout=120)
    finally:
        worker.stop()
