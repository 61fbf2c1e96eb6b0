"""Small HTTP helpers for the service tests: upload a case, submit a job, wait for it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from bench.stack import zip_bytes
from p2sam.jobstore import TERMINAL


def client(url: str, key: str | None, bearer: bool = False) -> httpx.Client:
    headers = {}
    if key:
        headers = {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def upload_zip(c: httpx.Client, *paths: str | Path) -> dict:
    r = c.post("/v1/uploads", content=zip_bytes(*paths), headers={"Content-Type": "application/zip"})
    assert r.status_code == 201, r.text
    return r.json()


def upload_files(c: httpx.Client, folder: str | Path) -> dict:
    files = [("file", (f.name, f.read_bytes(), "application/dicom")) for f in sorted(Path(folder).iterdir())]
    r = c.post("/v1/uploads", files=files)
    assert r.status_code == 201, r.text
    return r.json()


def job_body(prior: dict, targets: list[dict], **kw) -> dict:
    body = {"prior": {"upload_id": prior["id"], "roi": "GTV"},
            "targets": [{"upload_id": t["id"], "name": f"visit{i + 1}"} for i, t in enumerate(targets)],
            "model": "testmodel", "n_samples": 2, "outputs": ["nifti"]}
    body.update(kw)
    return body


def submit(c: httpx.Client, body: dict, key: str | None = None) -> dict:
    headers = {"Idempotency-Key": key} if key else {}
    r = c.post("/v1/jobs", json=body, headers=headers)
    assert r.status_code in (200, 202), r.text
    return r.json()


def wait(c: httpx.Client, job_id: str, timeout: float = 180, states=TERMINAL) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {json.dumps(job)[:500]}")


def record(data_dir: Path, job_id: str) -> dict:
    return json.loads((Path(data_dir) / "jobs" / f"{job_id}.json").read_text())
