"""Auth, limits, bad input and privacy: 401 / 403 / 413 / 422 as problem+json with a reason,
nothing outside a job's own files downloadable, no patient identifiers in any log."""

from __future__ import annotations

import io
import socket
import zipfile
from pathlib import Path

import pytest

from service.auth import KeyStore

from .client import client, job_body, submit, wait
from .conftest import MAX_UPLOAD_MB

pytestmark = pytest.mark.timeout(300)
PROBLEM = "application/problem+json"


def _problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in r.text
    return body


# --- authentication and scopes
def test_no_key_is_401(stack):
    with client(stack.url, None) as anon:
        r = anon.get("/v1/models")
        body = _problem(r, 401)
        assert "X-API-Key" in body["detail"] and r.headers["www-authenticate"] == "Bearer"
        _problem(anon.post("/v1/uploads", content=b"x"), 401)


def test_unknown_and_revoked_keys_are_401(stack):
    with client(stack.url, "p2s_000000000000_not-a-key") as bad:
        _problem(bad.get("/v1/models"), 401)
    keys = KeyStore(stack.data_dir)
    key = keys.create("short-lived", ["read"])
    with client(stack.url, key) as c:
        assert c.get("/v1/models").status_code == 200
        assert keys.revoke("short-lived") == 1
        _problem(c.get("/v1/models"), 401)


def test_wrong_scope_is_403(stack, uploaded):
    with client(stack.url, stack.keys["viewer"]) as viewer:
        body = _problem(viewer.post("/v1/uploads", content=b"x"), 403)
        assert "'submit' scope" in body["detail"]
        _problem(viewer.post("/v1/jobs", json=job_body(uploaded["prior"], [uploaded["followup"]])), 403)


def test_jobs_are_private_to_their_key_unless_read_or_admin(stack, api, uploaded):
    job = submit(api, job_body(uploaded["prior"], [uploaded["followup"]], n_samples=0))
    with client(stack.url, stack.keys["other"]) as other:  # submit scope, another system
        _problem(other.get(f"/v1/jobs/{job['id']}"), 403)
        _problem(other.delete(f"/v1/jobs/{job['id']}"), 403)
        # ... nor may it build a job on someone else's upload
        _problem(other.post("/v1/jobs", json=job_body(uploaded["prior"], [uploaded["followup"]])), 404)
    with client(stack.url, stack.keys["viewer"]) as viewer:  # read scope: may read, not delete
        assert viewer.get(f"/v1/jobs/{job['id']}").status_code == 200
        _problem(viewer.delete(f"/v1/jobs/{job['id']}"), 403)
    assert wait(api, job["id"])["state"] == "succeeded"


# --- size limits
def test_declared_oversize_upload_is_413_before_the_body_is_read(stack):
    limit = MAX_UPLOAD_MB << 20
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
        s.sendall((f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nX-API-Key: {stack.keys['planning']}\r\n"
                   f"Content-Type: application/zip\r\nContent-Length: {limit * 50}\r\n\r\n").encode())
        reply = s.recv(4096).decode()  # answered although not one byte of the body was sent
    assert reply.startswith("HTTP/1.1 413") and PROBLEM in reply


def test_streamed_oversize_upload_is_413(stack, api):
    limit = MAX_UPLOAD_MB << 20

    def chunks():  # chunked transfer: no Content-Length to check up front
        for _ in range(limit // (256 << 10) + 2):
            yield b"\0" * (256 << 10)

    body = _problem(api.post("/v1/uploads", content=chunks(), headers={"Content-Type": "application/zip"}), 413)
    assert f"{MAX_UPLOAD_MB:g} MiB" in body["detail"]
    assert not [p for p in (stack.data_dir / "uploads").iterdir() if not (p / "manifest.json").exists()]


# --- bad input
def test_malformed_dicom_is_422_with_a_reason(api, small_case):
    garbage = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\x07" * 200
    body = _problem(api.post("/v1/uploads", files=[("file", ("slice.dcm", garbage, "application/dicom"))]), 422)
    assert "DICOM" in body["detail"] and "cannot be read" in body["detail"]
    # a real slice cut short: the header reads, the pixel data does not
    first = sorted(Path(small_case["followup1"]).iterdir())[0].read_bytes()
    body = _problem(api.post("/v1/uploads", files=[("file", ("cut.dcm", first[: len(first) - 3000], "application/dicom"))]), 422)
    assert body["detail"]


def test_other_bad_uploads_are_422(api):
    _problem(api.post("/v1/uploads", files=[("file", ("notes.txt", b"hello", "text/plain"))]), 422)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../etc/evil.dcm", b"x")
    body = _problem(api.post("/v1/uploads", content=buf.getvalue(), headers={"Content-Type": "application/zip"}), 422)
    assert "path traversal" in body["detail"]


def test_bad_job_requests_are_problems(api, uploaded):
    body = _problem(api.post("/v1/jobs", json={"prior": {}, "targets": []}), 422)
    assert body["type"] == "/problems/validation" and body["errors"]
    _problem(api.post("/v1/jobs", json=job_body(uploaded["prior"], [uploaded["followup"]], model="nosuchmodel")), 422)
    wrong_roi = job_body(uploaded["prior"], [uploaded["followup"]])
    wrong_roi["prior"]["roi"] = "Heart"
    assert "GTV" in _problem(api.post("/v1/jobs", json=wrong_roi), 422)["detail"]
    _problem(api.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}), 422)
    _problem(api.post("/v1/jobs", json={"prior": {"upload_id": "0" * 32}, "targets": [{"upload_id": "0" * 32}]}), 404)


def test_framework_errors_are_problems_too(api):
    _problem(api.get("/v1/nothing-here"), 404)
    _problem(api.put("/v1/jobs"), 405)
    _problem(api.get("/v1/jobs/not-a-job-id"), 404)


def test_no_file_outside_a_job_can_be_downloaded(stack, api, uploaded):
    job = wait(api, submit(api, job_body(uploaded["prior"], [uploaded["followup"]], n_samples=0))["id"])
    base = f"/v1/jobs/{job['id']}/artifacts"
    for path in ("visit1/..%2F..%2F..%2Fapikeys.json", "..%2F..%2Fjobs/x", "visit1/%2Fetc%2Fpasswd",
                 "visit1/.%2E%2Fresult.json", "visit1/manifest.json"):
        assert api.get(f"{base}/{path}").status_code == 404
    assert api.get(f"{base}/visit1/result.json").status_code == 200


def test_delete_purges_inputs_and_outputs_and_is_audited(stack, api, small_case):
    from .client import upload_files, upload_zip

    prior = upload_zip(api, small_case["prior"], small_case["prior_rtstruct"])
    followup = upload_files(api, small_case["followup2"])
    job = wait(api, submit(api, job_body(prior, [followup], n_samples=0))["id"])
    assert job["state"] == "succeeded"
    r = api.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["purged"] is True
    assert not (stack.data_dir / "results" / job["id"]).exists()
    assert not (stack.data_dir / "uploads" / prior["id"]).exists()
    assert not (stack.data_dir / "uploads" / followup["id"]).exists()
    _problem(api.get(f"/v1/jobs/{job['id']}/results"), 410)
    audit = (stack.data_dir / "audit.log").read_text()
    assert f'"action":"job.delete","job_id":"{job["id"]}"' in audit


def test_queued_job_can_be_cancelled(stack, api, uploaded):
    for w in stack.live_workers():
        w.stop()
    job = submit(api, job_body(uploaded["prior"], [uploaded["followup"]], n_samples=1))
    r = api.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    stack.start_worker()
    assert api.get(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"


def test_logs_hold_no_keys_and_no_patient_identifiers(stack, small_case, case):
    """Logs name jobs and uploads by id: never patient names, patient IDs, file names or keys."""
    import pydicom

    ds = pydicom.dcmread(sorted(Path(small_case["followup1"]).iterdir())[0], stop_before_pixels=True)
    identifiers = {str(ds.PatientName), str(ds.PatientID), "PHANTOM-0003", "slice.dcm", "cut.dcm", "notes.txt"}
    logs = {p.name: p.read_text(errors="replace") for p in (stack.root / "logs").glob("*.log")}
    logs["audit.log"] = (stack.data_dir / "audit.log").read_text()
    for name, text in logs.items():
        assert "Invalid value for VR" not in text, f"a DICOM library logged element values in {name}"
        for ident in identifiers:
            assert ident not in text, f"{ident!r} found in {name}"
        for key in stack.keys.values():
            assert key[len("p2s_"):] not in text, f"an API key found in {name}"
