"""The must-show end to end (issue 13): the example case (`p2sam example`) in a real Orthanc, a
job submitted to the real API (uvicorn) naming its inputs by study / series UID, pulled and run by
a real Celery worker, its RTSTRUCT + SEGs sent back by `p2sam dicom-send` and read back from
Orthanc with pydicom. Pulled by C-GET and sent by C-STORE; pulled by WADO-RS and sent by STOW-RS.
Plus the API's clear errors and POST /v1/jobs/{id}/deliveries."""

from __future__ import annotations

import json
import shutil
import sys
import time

import pydicom
import pytest

from bench.stack import Proc, RedisServer, Stack
from service.auth import KeyStore

from .orthanc import Orthanc, need_orthanc
from .test_send import check_results_in_pacs

pytestmark = pytest.mark.timeout(900)


def uids(folder) -> tuple[str, str]:
    ds = pydicom.dcmread(next(iter(sorted(folder.iterdir()))), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, example):
    need_orthanc()
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    assert server.upload(example["prior"], example["prior_rtstruct"], example["followup1"]) == 33
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pacs):
    """API + worker + the DICOM sender (`p2sam dicom-send`), one data volume, peers = the Orthanc."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    peers = {"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}}
    if pacs.has_dicomweb:
        peers["web"] = {"url": pacs.dicomweb_url}
    root = tmp_path_factory.mktemp("stack")
    redis = RedisServer(root / "redis")
    models = root / "models"
    models.mkdir()
    s = Stack(root, models, redis.url, min_island_mm2=0, default_model_ct="ct_phantom", dicom_peers=json.dumps(peers),
              dicom_send_interval_s=0.5, dicom_retry_base_s=0.5, dicom_retry_max_s=2, dicom_timeout_s=10)
    sender = None
    try:
        s.start_api()
        s.start_worker()
        sender = Proc("dicom-send", [sys.executable, "-m", "p2sam.cli", "dicom-send"], s.env, root / "logs")
        s.key = KeyStore(s.data_dir).create("planning-system", ["submit", "read"])
        yield s
    finally:
        if sender is not None:
            sender.stop()
        s.stop()
        redis.stop()


@pytest.fixture
def api(stack):
    import httpx

    with httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.key}, timeout=60) as c:
        yield c


def wait_for(c, job_id: str, until, timeout: float = 600.0) -> dict:
    deadline = time.time() + timeout
    job = {}
    while time.time() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        if job["state"] in ("failed", "cancelled") and not until(job):
            break
        time.sleep(0.5)
    raise AssertionError(f"job {job_id}: {json.dumps(job)[:1500]}")


def delivered(job: dict) -> bool:
    return len(job["deliveries"]) == 3 and all(d["state"] == "delivered" for d in job["deliveries"])


def body(example, pull_from: str, send_to: list[str]) -> dict:
    prior_study, _ = uids(example["prior"])
    _, target_series = uids(example["followup1"])
    return {"prior": {"peer": pull_from, "study_uid": prior_study, "roi": "GTV"},
            "targets": [{"peer": pull_from, "series_uid": target_series, "name": "followup1"}],
            "model": "ct_phantom", "n_samples": 2, "outputs": ["rtstruct", "seg"], "destinations": send_to}


@pytest.mark.parametrize("protocol", ["c-store", "stow-rs"])
def test_job_pulls_the_example_by_uids_and_its_results_arrive_in_orthanc(stack, api, pacs, example, protocol):
    peer = "pacs" if protocol == "c-store" else "web"  # pulled by C-GET / WADO-RS, sent by C-STORE / STOW-RS
    if peer == "web" and not pacs.has_dicomweb:
        pytest.skip("the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    before = pacs.count()
    r = api.post("/v1/jobs", json=body(example, peer, [peer]))
    assert r.status_code == 202, r.text
    assert r.json()["destinations"] == [peer] and r.json()["deliveries"] == []
    job = wait_for(api, r.json()["id"], lambda j: j["state"] == "succeeded" and delivered(j))
    assert {(d["artifact"], d["destination"], d["protocol"], d["attempts"]) for d in job["deliveries"]} == {
        (a, peer, protocol, 1) for a in ("rtstruct.dcm", "seg.dcm", "probability_seg.dcm")}
    assert all(d["last_error"] is None and d["delivered_at"] for d in job["deliveries"])
    assert pacs.count() == before + 3
    check_results_in_pacs(pacs, example, stack.data_dir / "results" / job["id"])
    record = json.loads((stack.data_dir / "jobs" / f"{job['id']}.json").read_text())
    assert [(e["role"], e["instances"]) for e in record["pull"]] == [("prior", 17), ("targets[0]", 16)]
    assert set(record["uploads"]) == {e["upload_id"] for e in record["pull"]}  # purged with the job
    logs = "".join(p.read_text(errors="replace") for p in (stack.root / "logs").glob("*.log"))
    assert "pulled from" in logs and not any(uid in logs for uid in (*uids(example["prior"]), *uids(example["followup1"])))


def test_clear_errors_for_unknown_peers_and_series(stack, api, example):
    b = body(example, "pacs", ["nowhere"])
    r = api.post("/v1/jobs", json=b)
    assert r.status_code == 422 and "unknown peer 'nowhere'" in r.json()["detail"], r.text
    b = body(example, "elsewhere", [])
    r = api.post("/v1/jobs", json=b)
    assert r.status_code == 422 and "prior.peer: unknown peer 'elsewhere'" in r.json()["detail"], r.text
    b = body(example, "pacs", [])
    b["targets"][0]["series_uid"] = "1.2.826.0.1.3680043.99999.1"
    r = api.post("/v1/jobs", json=b)
    assert r.status_code == 202, r.text
    job = wait_for(api, r.json()["id"], lambda j: j["state"] == "failed", timeout=300)
    assert job["error"]["status"] == 404 and job["error"]["type"] == "/problems/not-on-pacs"
    assert "1.2.826.0.1.3680043.99999.1" in job["error"]["detail"] and job["deliveries"] == []
    r = api.post(f"/v1/jobs/{job['id']}/deliveries", json={"destinations": ["pacs"]})
    assert r.status_code == 409, r.text


def test_post_deliveries_sends_to_a_new_destination_and_resends_on_request(stack, api, pacs, example):
    if not pacs.has_dicomweb:
        pytest.skip("the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    r = api.post("/v1/jobs", json=body(example, "web", []))  # named no destinations: nothing is sent
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_for(api, job_id, lambda j: j["state"] == "succeeded")
    time.sleep(2)  # a few sender rounds
    assert api.get(f"/v1/jobs/{job_id}").json()["deliveries"] == []
    before = pacs.count()
    r = api.post(f"/v1/jobs/{job_id}/deliveries", json={"destinations": ["nowhere"]})
    assert r.status_code == 422 and "unknown peer 'nowhere'" in r.json()["detail"]
    r = api.post(f"/v1/jobs/{job_id}/deliveries", json={"destinations": ["pacs"]})
    assert r.status_code == 202, r.text
    assert len(r.json()["requeued"]) == 3 and {d["destination"] for d in r.json()["deliveries"]} == {"pacs"}
    assert {d["state"] for d in r.json()["deliveries"]} <= {"pending", "sending", "delivered"}  # the sender may be quick
    job = wait_for(api, job_id, delivered, timeout=120)
    assert job["destinations"] == ["pacs"] and pacs.count() == before + 3
    r = api.post(f"/v1/jobs/{job_id}/deliveries", json={})  # nothing refused or failed: nothing to re-send
    assert r.status_code == 202 and r.json()["requeued"] == []
    r = api.post(f"/v1/jobs/{job_id}/deliveries", json={"again": True})  # re-send what was delivered
    assert r.status_code == 202 and len(r.json()["requeued"]) == 3
    outbox = stack.data_dir / "outbox" / job_id

    def sent_twice(j: dict) -> bool:
        return delivered(j) and sorted(json.loads(p.read_text())["sends"] for p in outbox.glob("*.json")) == [2, 2, 2]

    wait_for(api, job_id, sent_twice, timeout=120)
    assert pacs.count() == before + 3  # the same SOP Instance UIDs: Orthanc holds each once
    audit = (stack.data_dir / "audit.log").read_text()
    assert audit.count("job.deliveries") >= 4
