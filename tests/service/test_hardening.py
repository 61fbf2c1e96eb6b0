"""Failures an attack on the running service found (issue 17), each against real processes:
idempotency entries that the retention sweep took for 1970, a Unicode digit as ROI name,
a read-only data volume, and the response headers of artifacts and API JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from bench.stack import Stack

from .client import client, job_body, submit, upload_files, upload_zip, wait

pytestmark = pytest.mark.timeout(300)
PROBLEM = "application/problem+json"


def _problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and "Traceback" not in r.text
    return body


# --- 2. idempotency entries carry created_at; the retention sweep keeps them for the retention period
def test_idempotency_key_survives_the_retention_sweep(stack, api, uploaded):
    from p2sam.settings import Settings
    from service.maintenance import Maintenance
    from service.services import Services

    body = job_body(uploaded["prior"], [uploaded["followup"]], n_samples=0)
    first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-after-22s"})
    assert first.status_code == 202
    entries = [json.loads(p.read_text()) for p in (stack.data_dir / "idempotency").glob("*.json")]
    mine = [e for e in entries if e["job_id"] == first.json()["id"]]
    assert len(mine) == 1 and abs(mine[0].get("created_at", 0) - time.time()) < 60, mine

    # The API's own maintenance round, as it runs every P2SAM_MAINTENANCE_INTERVAL_S (retention 72 h).
    services = Services(Settings(data_dir=stack.data_dir, retention_hours=72))
    Maintenance(services).retention(time.time() - 72 * 3600)
    again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-after-22s"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text
    assert wait(api, first.json()["id"])["state"] == "succeeded"


# --- 4. a Unicode digit is not an ROI number
@pytest.mark.parametrize("roi", ["²", "③", "٣"])
def test_unicode_digit_roi_is_422_and_audited(stack, api, uploaded, roi):
    r = api.post("/v1/jobs", json={**job_body(uploaded["prior"], [uploaded["followup"]]),
                                   "prior": {"upload_id": uploaded["prior"]["id"], "roi": roi}})
    body = _problem(r, 422)
    assert body["type"] == "/problems/roi-not-found" and "GTV" in body["detail"]
    batch = {"patients": [{"id": "p1", "prior": {"upload_id": uploaded["prior"]["id"], "roi": roi},
                           "visits": [{"upload_id": uploaded["followup"]["id"]}]}], "defaults": {"model": "testmodel"}}
    _problem(api.post("/v1/batches", json=batch), 422)
    audit = [json.loads(line) for line in (stack.data_dir / "audit.log").read_text().splitlines()[-20:]]
    rejected = [a for a in audit if a["action"] in ("job.submit", "batch.submit") and a["outcome"] == "rejected"]
    assert {a["action"] for a in rejected} == {"job.submit", "batch.submit"} and all(a["status"] == 422 for a in rejected)


def test_roi_by_number_still_works(stack, api, uploaded):
    job = submit(api, {**job_body(uploaded["prior"], [uploaded["followup"]], n_samples=0),
                       "prior": {"upload_id": uploaded["prior"]["id"], "roi": "1"}})
    assert wait(api, job["id"])["state"] == "succeeded"


# --- 5. a read-only data volume: 503 problems for what must write, reads keep working
def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture()
def tmpfs_stack(tmp_path, model_dir):
    """An embedded-mode API whose data directory is its own tmpfs, so it can be remounted read-only."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    data = tmp_path / "data"
    data.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(data)):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): the read-only volume test needs one")
    s = Stack(tmp_path, model_dir, None, min_island_mm2=0)
    try:
        s.start_api()
        yield s
    finally:
        s.stop()
        _mount("-o", "remount,rw", str(data))
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def test_read_only_data_volume_is_503_and_reads_keep_working(tmpfs_stack, small_case):
    from service.auth import KeyStore

    s = tmpfs_stack
    key = KeyStore(s.data_dir).create("planning", ["submit", "read"])
    with client(s.url, key) as c:
        prior = upload_zip(c, small_case["prior"], small_case["prior_rtstruct"])
        followup = upload_files(c, small_case["followup1"])
        job = submit(c, job_body(prior, [followup], n_samples=0))
        assert wait(c, job["id"])["state"] == "succeeded"
        assert _mount("-o", "remount,ro", str(s.data_dir))
        try:
            assert httpx.get(f"{s.url}/healthz").status_code == 200
            ready = _problem(httpx.get(f"{s.url}/readyz"), 503)
            assert ready["checks"]["job_store"] is False
            # reads need no write: they work (their audit entries go to the server log instead)
            assert c.get(f"/v1/jobs/{job['id']}").json()["state"] == "succeeded"
            assert c.get("/v1/jobs").status_code == 200 and c.get("/v1/models").status_code == 200
            results = c.get(f"/v1/jobs/{job['id']}/results").json()
            art = results["targets"][0]["artifacts"][0]
            assert c.get(art["url"]).status_code == 200
            _problem(httpx.get(f"{s.url}/v1/jobs"), 401)  # unauthenticated: still a 401
            # writes: 503 problems that say why, and Retry-After
            for r in (c.post("/v1/jobs", json=job_body(prior, [followup], n_samples=1)),
                      c.post("/v1/uploads", content=Path(small_case["prior_rtstruct"]).read_bytes(),
                             headers={"Content-Type": "application/dicom"}),
                      c.delete(f"/v1/jobs/{job['id']}")):
                body = _problem(r, 503)
                assert body["type"] == "/problems/storage-unavailable" and "read-only or full" in body["detail"]
                assert r.headers.get("retry-after")
        finally:
            assert _mount("-o", "remount,rw", str(s.data_dir))
        again = submit(c, job_body(prior, [followup], n_samples=1))  # writable again: back to normal
        assert wait(c, again["id"])["state"] == "succeeded"
    log = s.api.log()
    assert "Traceback" not in log, log[-3000:]
    assert "audit log not writable" in log
