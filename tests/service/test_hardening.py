"""Failures an attack on the running service found (issue 17), each against real processes:
idempotency entries that the retention sweep took for 1970, a Unicode digit as ROI name,
a read-only data volume, and the response headers of artifacts and API JSON."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from bench.stack import Stack

from .client import client, job_body, submit, upload_files, upload_zip, wait

pytestmark = pytest.mark.timeout(900)  # (the session stack starts within the first test)
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
    mine = [e for e in entries if e.get("job_id") == first.json()["id"]]  # (batch entries carry batch_id)
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


@contextlib.contextmanager
def _tmpfs_api(root: Path, model_dir: Path, broker_url: str | None = None, **settings):
    """An API (embedded mode, or with ``broker_url`` a Celery worker too) whose data directory is its
    own tmpfs, so it can be remounted read-only."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    data = root / "data"
    data.mkdir(parents=True)
    if not _mount("-t", "tmpfs", "-o", "size=256m", "tmpfs", str(data)):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): the read-only volume test needs one")
    s = Stack(root, model_dir, broker_url, min_island_mm2=0, **settings)
    try:
        s.start_api()
        if broker_url:
            s.start_worker()
        yield s
    finally:
        s.stop()
        _mount("-o", "remount,rw", str(data))
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


@pytest.fixture()
def tmpfs_stack(tmp_path, model_dir):
    with _tmpfs_api(tmp_path, model_dir) as s:
        yield s


def test_read_only_data_volume_is_503_and_reads_keep_working(tmpfs_stack, small_case):
    from service.auth import KeyStore

    s = tmpfs_stack
    key = KeyStore(s.data_dir).create("planning", ["submit", "read"])
    with client(s.url, key) as c:
        prior = upload_zip(c, small_case["prior"], small_case["prior_rtstruct"])
        followup = upload_files(c, small_case["followup1"])
        job = submit(c, job_body(prior, [followup], n_samples=0), key="before-read-only")
        assert wait(c, job["id"])["state"] == "succeeded"
        assert _mount("-o", "remount,ro", str(s.data_dir))
        try:
            assert httpx.get(f"{s.url}/healthz").status_code == 200
            # a client retrying its POST with the same Idempotency-Key gets its job back: a replay is a read
            again = c.post("/v1/jobs", json=job_body(prior, [followup], n_samples=0),
                           headers={"Idempotency-Key": "before-read-only"})
            assert again.status_code == 200 and again.json()["id"] == job["id"], again.text
            assert again.headers["idempotent-replayed"] == "true"
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


@pytest.mark.parametrize("backend", ["files", "postgres"])
def test_a_job_running_when_the_volume_turns_read_only_is_run_again_not_failed(tmp_path, model_dir, redis_server,
                                                                               backend, request):
    """The volume goes read-only mid-job on a Celery worker: nothing can be written, not even a
    failure, so the job is left running (one log line, no traceback) and its message comes back in
    10 s (a Celery retry): the same pool process takes its own lease over (the lease timeout is 600 s
    here, longer than the test waits) and finishes it. The job queued behind it cannot be claimed
    while read-only: it must not be lost (its record still says its message was published).
    With the records in PostgreSQL (still writable) a deferred job goes back to queued at once, the
    attempt not counted (else a long read-only period would use up P2SAM_JOB_MAX_ATTEMPTS)."""
    from imaging.phantom import write_example_case
    from service.auth import KeyStore

    case = write_example_case(tmp_path / "case", seed=5, shape=(24, 96, 96))  # long enough to catch it running
    broker = redis_server.url.rsplit("/", 1)[0] + "/2"  # its own database: the session stack's worker stays out
    db = {"database_url": request.getfixturevalue("pg_url")} if backend == "postgres" else {}
    with _tmpfs_api(tmp_path / "stack", model_dir, broker, lease_timeout_s=600, **db) as s:
        key = KeyStore(s.data_dir).create("planning", ["submit", "read"])
        with client(s.url, key) as c:
            prior = upload_zip(c, case["prior"], case["prior_rtstruct"])
            followup = upload_files(c, case["followup1"])
            job = submit(c, job_body(prior, [followup], n_samples=8))
            behind = submit(c, job_body(prior, [followup], n_samples=0))  # its message arrives while read-only
            running = wait(c, job["id"], states=("running", "succeeded", "failed"))
            while running["state"] == "running" and running["progress"] < 0.1:
                running = c.get(f"/v1/jobs/{job['id']}").json()
                time.sleep(0.05)
            assert running["state"] == "running", f"the job ended before the volume could be made read-only: {running}"
            assert _mount("-o", "remount,ro", str(s.data_dir))
            try:
                time.sleep(3)
                assert c.get(f"/v1/jobs/{job['id']}").json()["state"] in (("queued", "running") if db else ("running",))
            finally:
                assert _mount("-o", "remount,rw", str(s.data_dir))
            done = wait(c, job["id"], timeout=240)
            assert done["state"] == "succeeded" and done["attempts"] == (1 if db else 2), done
            # the queued job could not even be claimed: its message came back (a Celery retry), it ran once
            second = wait(c, behind["id"], timeout=240)
            assert second["state"] == "succeeded" and second["attempts"] == 1, second
        log = s.workers[0].log()
    assert "the data volume is not writable" in log and "Traceback" not in log, log[-3000:]
    if not db:  # (in PostgreSQL the claim itself can be written)
        assert "not started, the data volume is not writable" in log, log[-3000:]


# --- weak spots
def test_zip_bomb_stops_at_the_upload_limit(stack, api):
    """64 MB of zeros in a ~64 KB zip: refused at the 2 MB upload limit (P2SAM_MAX_UPLOAD_MB of
    the test stack), not the old 8 GB cap, and expanded inside the data volume, not $TMPDIR."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (64 << 20))
    assert len(buf.getvalue()) < 1 << 20
    body = _problem(api.post("/v1/uploads", content=buf.getvalue(), headers={"Content-Type": "application/zip"}), 422)
    assert "more than the 2 MB accepted" in body["detail"], body
    assert not [p for p in (stack.data_dir / "uploads").iterdir() if p.name.startswith(".") or
                any(q.name.startswith("p2sam-zip-") for q in p.iterdir())]  # nothing left behind


def test_unzip_is_counted_as_it_goes(tmp_path):
    """A member whose data expands beyond the limit is stopped while it is written."""
    import zipfile

    from imaging import UnsafeArchiveError
    from imaging.sources import extracted_zip

    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (3 << 20))
        zf.writestr("b.dcm", b"\0" * (3 << 20))
    with pytest.raises(UnsafeArchiveError, match="more than the 4 MB accepted"):
        with extracted_zip(path, into=tmp_path / "x", max_bytes=4_000_000):
            pass
    with extracted_zip(path, into=tmp_path / "x", max_bytes=7_000_000) as root:
        assert root.parent == (tmp_path / "x").resolve() and len(list(root.iterdir())) == 2


@pytest.mark.parametrize("name,ok", [("GTV\x00", False), ("GTV\x1b[31m", False), ("a\\b", False), ("x" * 65, False),
                                     ("   ", False), ("GTV Tumör 腫瘍", True)])
def test_roi_name_out_follows_dicom_lo(stack, api, uploaded, name, ok):
    body = job_body(uploaded["prior"], [uploaded["followup"]], n_samples=0, outputs=["rtstruct"], roi_name_out=name)
    r = api.post("/v1/jobs", json=body)
    if not ok:
        problem = _problem(r, 422)
        assert "roi_name_out" in problem["detail"]
        return
    assert r.status_code == 202, r.text
    job = wait(api, r.json()["id"])
    assert job["state"] == "succeeded", job
    import io

    import pydicom

    art = api.get(f"/v1/jobs/{job['id']}/results").json()["targets"][0]["artifacts"]
    rt = next(a for a in art if a["name"] == "rtstruct.dcm")
    download = api.get(rt["url"])
    ds = pydicom.dcmread(io.BytesIO(download.content))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.StructureSetROISequence[0].ROIName == name


def test_security_headers_on_artifacts_and_api_json(stack, api, uploaded):
    job = submit(api, job_body(uploaded["prior"], [uploaded["followup"]], n_samples=0, outputs=["nifti", "preview"]))
    assert wait(api, job["id"])["state"] == "succeeded"
    listing = api.get("/v1/jobs")
    assert listing.headers["cache-control"] == "no-store" and listing.headers["x-content-type-options"] == "nosniff"
    results = api.get(f"/v1/jobs/{job['id']}/results")
    assert results.headers["cache-control"] == "no-store"
    for a in results.json()["targets"][0]["artifacts"]:
        r = api.get(a["url"])
        assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
        assert "no-store" in r.headers["cache-control"] and r.headers["content-type"].startswith(a["media_type"])
    assert httpx.get(f"{stack.url}/v1/models").headers["x-content-type-options"] == "nosniff"  # a 401 too


def test_client_disconnect_mid_upload_is_one_calm_line(stack, small_case):
    """Half a multipart upload, then the connection closes: no traceback in the API log."""
    import socket

    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.dcm\"\r\n"
            "Content-Type: application/dicom\r\n\r\n").encode()
    before = stack.api.log()
    host, port = "127.0.0.1", stack.port
    with socket.create_connection((host, port)) as s:
        s.sendall((f"POST /v1/uploads HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {stack.keys['planning']}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 1000000\r\n\r\n").encode()
                  + head + b"\0" * 5000)
        time.sleep(1.0)
    deadline = time.time() + 20
    while time.time() < deadline and "client disconnected" not in stack.api.log()[len(before):]:
        time.sleep(0.3)
    new = stack.api.log()[len(before):]
    assert "client disconnected during POST /v1/uploads" in new, new[-3000:]
    assert "Traceback" not in new and len([ln for ln in new.splitlines() if "disconnect" in ln.lower()]) == 1, new[-3000:]


def test_a_trickling_body_is_cut_off(tmp_path, model_dir):
    """1 byte a second: the API answers 408 once the body timeout (here 2 s) has passed."""
    import socket

    s = Stack(tmp_path, model_dir, None, request_body_timeout_s=2)
    try:
        s.start_api()
        from service.auth import KeyStore

        key = KeyStore(s.data_dir).create("slow", ["submit", "read"])
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as c:
            c.sendall((f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
                       "Content-Type: application/dicom\r\nContent-Length: 100000\r\n\r\n").encode())
            t0 = time.time()
            answer = b""
            while time.time() - t0 < 30 and b"\r\n\r\n" not in answer:
                try:
                    c.sendall(b"\0")
                except OSError:
                    break
                c.settimeout(1.0)
                try:
                    answer += c.recv(4096)
                except socket.timeout:
                    pass
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert time.time() - t0 < 15
    finally:
        s.stop()
