"""Submitting a local batch manifest to the service: upload its files, POST /v1/batches, poll.

Standard library only (urllib), so the command works wherever the project is installed. Every
distinct file or folder of the manifest is uploaded once (a folder, e.g. a DICOM series, as a
zip; a file as it is); uploads carry no client file names. The key is sent as X-API-Key.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable

from .batch import Manifest

TERMINAL = ("succeeded", "failed", "cancelled")
_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".nii": "application/x-nifti",
          ".gz": "application/gzip", ".dcm": "application/dicom", ".zip": "application/zip"}


class ApiError(Exception):
    """The service answered with an error (its problem+json detail is the message)."""


class Api:
    def __init__(self, url: str, key: str, timeout: float = 120) -> None:
        self.url, self.key, self.timeout = url.rstrip("/"), key, timeout

    def request(self, method: str, path: str, body: Any = None, data=None, headers: dict[str, str] | None = None,
                raw: bool = False):
        headers = {"X-API-Key": self.key, "Accept": "application/json", **(headers or {})}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                content = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(f"{method} {path}: {exc.code} {_detail(exc)}") from None
        except urllib.error.URLError as exc:
            raise ApiError(f"cannot reach {self.url} ({exc.reason})") from None
        return content if raw else json.loads(content or b"null")

    def upload(self, path: Path) -> str:
        """Upload one file or folder (as a zip); returns the upload id."""
        with tempfile.TemporaryDirectory() as tmp:
            if path.is_dir():
                archive = Path(tmp) / "upload.zip"
                with zipfile.ZipFile(archive, "w") as zf:
                    for f in sorted(path.rglob("*")):
                        if f.is_file():
                            zf.write(f, f.relative_to(path))
                path, kind = archive, "application/zip"
            else:
                kind = _TYPES.get(path.suffix.lower(), "application/octet-stream")
            suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
            with open(path, "rb") as f:  # streamed; the name sent says only the kind of file
                headers = {"Content-Type": kind, "Content-Length": str(path.stat().st_size),
                           "Content-Disposition": f'attachment; filename="upload{suffix}"'}
                return self.request("POST", "/v1/uploads", data=f, headers=headers)["id"]


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        problem = json.loads(exc.read())
        return problem.get("detail") or problem.get("title") or exc.reason
    except (ValueError, OSError):
        return str(exc.reason)


def batch_request(api: Api, manifest: Manifest, chain: bool, defaults: dict[str, Any],
                  log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Upload every file of ``manifest`` (once each) and build the POST /v1/batches body."""
    ids: dict[str, str] = {}

    def upload(path: str) -> str:
        key = os.path.realpath(path)
        if key not in ids:
            ids[key] = api.upload(Path(path))
            log(f"uploaded {len(ids)} file(s)")
        return ids[key]

    patients = []
    for p in manifest.patients:
        prior = {"upload_id": upload(p.prior.image)}
        if os.path.realpath(p.prior.mask) != os.path.realpath(p.prior.image):
            prior["mask_upload_id"] = upload(p.prior.mask)
        if p.prior.roi:
            prior["roi"] = p.prior.roi
        if p.prior.rois is not None:
            prior["rois"] = p.prior.rois
        visits = []
        for v in p.visits:
            visit: dict[str, Any] = {"upload_id": upload(v.image)}
            if v.name:
                visit["name"] = v.name
            if v.truth:
                visit["truth_upload_id"] = upload(v.truth)
            visits.append(visit)
        patients.append({"id": p.id, "prior": prior, "visits": visits})
    return {"patients": patients, "chain": chain, "defaults": {**manifest.defaults, **defaults}}


def submit(api: Api, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
    return api.request("POST", "/v1/batches", body, headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex})


def wait(api: Api, batch_id: str, on_progress: Callable[[dict], None] = lambda b: None, interval: float = 2.0) -> dict:
    """Poll until the batch is finished; returns its last status."""
    while True:
        batch = api.request("GET", f"/v1/batches/{batch_id}")
        on_progress(batch)
        if batch["state"] in TERMINAL:
            return batch
        time.sleep(interval)


def download_report(api: Api, batch_id: str, folder: Path) -> dict[str, Any]:
    """report.json and report.csv into ``folder``; returns the report."""
    folder.mkdir(parents=True, exist_ok=True)
    report = api.request("GET", f"/v1/batches/{batch_id}/report", raw=True)
    (folder / "report.json").write_bytes(report)
    (folder / "report.csv").write_bytes(api.request("GET", f"/v1/batches/{batch_id}/report.csv", raw=True))
    return json.loads(report)
