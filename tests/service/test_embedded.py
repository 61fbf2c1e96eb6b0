"""Embedded mode: no P2SAM_BROKER_URL, the API runs the same job code in a background thread."""

from __future__ import annotations

import time

import httpx
import pytest

from bench.stack import Stack
from service.auth import KeyStore

from .client import client, job_body, record, submit, upload_files, upload_zip, wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def laptop(tmp_path_factory, model_dir):
    s = Stack(tmp_path_factory.mktemp("embedded"), model_dir, broker_url=None, min_island_mm2=0)
    s.start_api()
    s.key = KeyStore(s.data_dir).create("laptop", ["admin"])
    yield s
    s.stop()


def test_ready_without_a_broker(laptop):
    r = httpx.get(f"{laptop.url}/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"job_store": True, "embedded_worker": True}


def test_job_runs_in_process(laptop, small_case):
    with client(laptop.url, laptop.key) as c:
        prior = upload_zip(c, small_case["prior"], small_case["prior_rtstruct"])
        followup = upload_zip(c, small_case["followup2"])
        job = wait(c, submit(c, job_body(prior, [followup], outputs=["rtstruct", "nifti"]))["id"])
        assert job["state"] == "succeeded", job
        names = {a["name"] for a in c.get(f"/v1/jobs/{job['id']}/results").json()["targets"][0]["artifacts"]}
        assert {"rtstruct.dcm", "mask.nii.gz"} <= names
        rec = record(laptop.data_dir, job["id"])
        assert rec["attempts"] == 1 and rec["terminal_transitions"] == 1 and rec["published"]["count"] == 0


def test_deleting_a_running_job_cancels_then_purges_it(laptop, small_case):
    with client(laptop.url, laptop.key) as c:
        prior = upload_zip(c, small_case["prior"], small_case["prior_rtstruct"])
        followup = upload_files(c, small_case["followup1"])
        job = submit(c, job_body(prior, [followup] * 6, outputs=["nifti", "rtstruct"]))
        wait(c, job["id"], states={"running"})
        r = c.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        done = wait(c, job["id"])
        assert done["state"] == "cancelled"
        deadline = time.time() + 30
        while not c.get(f"/v1/jobs/{job['id']}").json()["purged"] and time.time() < deadline:
            time.sleep(0.2)
        assert c.get(f"/v1/jobs/{job['id']}").json()["purged"]
        assert not (laptop.data_dir / "results" / job["id"]).exists()
        assert not (laptop.data_dir / "uploads" / prior["id"]).exists()
