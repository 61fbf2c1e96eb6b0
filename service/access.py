"""Who may read or change which job, batch or upload: the API's one access policy, as FastAPI
dependencies (``record: ReadJob`` in a route's signature: the record, or 404 / 403, audited).

- ``read`` reads any job and batch; ``submit`` submits, and reads / changes what it submitted;
  ``admin`` does everything (see service.auth for the scopes);
- an upload is usable by the key that sent it, or an admin;
- a batch's patient tasks are not jobs: /v1/jobs answers 404 for them, naming their batch.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Union

from fastapi import Depends, Request

from p2sam.records import BatchRecord, JobRecord

from .auth import Principal, principal, require
from .problems import Problem

Record = Union[JobRecord, BatchRecord]


def owns(who: Principal, record: Record) -> bool:
    return record.owner.key_id == who.key_id


def may_read(who: Principal, record: Record) -> bool:
    """What the list routes show: ``read`` sees everything, others their own."""
    return who.has("read") or owns(who, record)


def allowed(who: Principal, record: Record, write: bool) -> bool:
    return who.is_admin or (owns(who, record) and who.has("submit")) or (not write and who.has("read"))


def _authorize(request: Request, who: Principal, record: Record, kind: str, action: str, write: bool,
               verb: str) -> Record:
    """``record`` if ``who`` may read it (with ``write``: change it, ``verb`` saying how); else 403, audited."""
    if allowed(who, record, write):
        return record
    rid = record.id
    request.app.state.services.audit.write(who, action, **{f"{kind}_id": rid}, outcome="denied", status=403)
    need = "admin, or the submitting key" if write else "read, or being the submitting key"
    raise Problem(403, f"this API key ('{who.name}') may not {verb if write else 'read'} {kind} {rid} (needs: {need})",
                  slug="forbidden")


def _not_found(request: Request, who: Principal, kind: str, rid: str, action: str, detail: str) -> Problem:
    request.app.state.services.audit.write(who, action, **{f"{kind}_id": rid if len(rid) <= 64 else None},
                                           outcome="not-found")
    return Problem(404, detail, slug=f"{kind}-not-found")


def job_access(action: str, *, write: bool = False, verb: str = "delete") -> Callable[..., Record]:
    """Dependency: the job ``{job_id}`` of the path, if the caller may read it (``write``: change it)."""

    def dependency(request: Request, job_id: str, who: Principal = Depends(principal)) -> Record:
        record = request.app.state.services.store.get(job_id)
        if record is None or record.is_patient_task:
            hint = f" (it is a patient of batch {record.batch.id}: see /v1/batches)" if record else ""
            raise _not_found(request, who, "job", job_id, action, f"job {job_id} not found{hint}")
        return _authorize(request, who, record, "job", action, write, verb)

    return dependency


def batch_access(action: str, *, write: bool = False) -> Callable[..., Record]:
    """Dependency: the batch ``{batch_id}`` of the path (settled), if the caller may read it (``write``: delete it)."""

    def dependency(request: Request, batch_id: str, who: Principal = Depends(principal)) -> Record:
        record = request.app.state.services.batches.settle(batch_id)
        if record is None:
            raise _not_found(request, who, "batch", batch_id, action, f"batch {batch_id} not found (GET /v1/batches "
                             "lists the batches this key may read)")
        return _authorize(request, who, record, "batch", action, write, "delete")

    return dependency


def upload_access(request: Request, upload_id: str, who: Principal = Depends(require("submit"))) -> dict[str, Any]:
    """Dependency: the manifest of upload ``{upload_id}``, for the key that sent it or an admin (else 404)."""
    manifest = request.app.state.services.uploads.manifest(upload_id)
    if manifest is None or (not who.is_admin and manifest.get("owner") != who.key_id):
        raise Problem(404, f"upload {upload_id} not found", slug="upload-not-found")
    return manifest


ReadJob = Annotated[JobRecord, Depends(job_access("job.read"))]
ReadResults = Annotated[JobRecord, Depends(job_access("results.read"))]
DownloadArtifact = Annotated[JobRecord, Depends(job_access("artifact.download"))]
DeleteJob = Annotated[JobRecord, Depends(job_access("job.delete", write=True))]
ReviewJob = Annotated[JobRecord, Depends(job_access("review.create", write=True, verb="review"))]
DeliverJob = Annotated[JobRecord, Depends(job_access("job.deliveries", write=True, verb="send the results of"))]
ReadBatch = Annotated[BatchRecord, Depends(batch_access("batch.read"))]
ReadBatchReport = Annotated[BatchRecord, Depends(batch_access("batch.report"))]
DeleteBatch = Annotated[BatchRecord, Depends(batch_access("batch.delete", write=True))]
OwnUpload = Annotated[dict[str, Any], Depends(upload_access)]
