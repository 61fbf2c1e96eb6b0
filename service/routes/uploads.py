"""POST /v1/uploads (DICOM as multipart files or a zip, NIfTI, PNG/JPEG), GET, DELETE."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from p2sam.jobstore import ACTIVE

from ..access import OwnUpload
from ..auth import Principal, principal, require
from ..problems import Problem, documented
from ..receive import receive_files
from ..schemas import UploadOut

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

_BODY = {
    "requestBody": {
        "required": True,
        "description": "DICOM files (multipart, any field name; or one zip), a NIfTI file or a PNG/JPEG picture. "
                       "Size-capped by P2SAM_MAX_UPLOAD_MB.",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}}}},
            **{media: {"schema": {"type": "string", "format": "binary", "minLength": 1}} for media in (
                "application/zip", "application/dicom", "application/x-nifti", "application/gzip", "image/png",
                "image/jpeg", "application/octet-stream")},
        },
    }
}


@router.post("", status_code=201, response_model=UploadOut, openapi_extra=_BODY,
             responses=documented(400, 401, 403, 413, 422))
async def create_upload(request: Request, response: Response, who: Principal = Depends(require("submit"))) -> UploadOut:
    """Store and validate an upload; returns its id and the series, contours and images found."""
    services = request.app.state.services
    upload_id, incoming = services.uploads.new()
    try:
        _, size = await receive_files(request, incoming)
        manifest = await run_in_threadpool(services.uploads.ingest, upload_id, who.key_id, size)
    except BaseException as exc:
        services.uploads.discard(upload_id)
        status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
        services.audit.write(who, "upload.create", upload_id=upload_id, outcome="rejected", status=status)
        raise
    services.audit.write(who, "upload.create", upload_id=upload_id, size_bytes=size)
    response.headers["Location"] = f"/v1/uploads/{upload_id}"
    return UploadOut.of(manifest)


@router.get("/{upload_id}", response_model=UploadOut, responses=documented(401, 403, 404))
def get_upload(request: Request, upload_id: str, manifest: OwnUpload) -> UploadOut:
    """What an upload holds (for the key that sent it, or an admin)."""
    return UploadOut.of(manifest)


@router.delete("/{upload_id}", status_code=204, responses=documented(401, 403, 404, 409))
def delete_upload(request: Request, upload_id: str, manifest: OwnUpload,
                  who: Principal = Depends(principal)) -> Response:
    """Delete an upload no queued or running job uses (audited)."""
    services = request.app.state.services
    busy = [r.id for r in services.store.by_state(*ACTIVE) if upload_id in r.uploads]
    if busy:
        raise Problem(409, f"upload {upload_id} is used by job(s) still queued or running: {', '.join(busy)}", slug="upload-in-use")
    services.uploads.discard(upload_id)
    services.audit.write(who, "upload.delete", upload_id=upload_id)
    return Response(status_code=204)
