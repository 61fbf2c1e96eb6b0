"""Jobs: submit (with Idempotency-Key), status, results, artifact downloads, cancel + purge.

Access (service.access, one policy for jobs, batches and uploads): ``read`` reads any job;
``submit`` submits and reads / deletes the jobs it submitted; ``admin`` does everything. Every
access is audited.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from p2sam.jobstore import CANCELLED, QUEUED, RUNNING, SUCCEEDED, TERMINAL
from p2sam.records import JobRecord
from p2sam.runner import MEDIA_TYPES

from ..access import DeleteJob, DeliverJob, DownloadArtifact, ReadJob, ReadResults, may_read
from ..auth import Principal, principal, require
from ..problems import Problem, documented
from ..schemas import DeliveriesIn, DeliveriesOut, DeliveryOut, JobIn, JobListOut, JobOut, ResultsOut, TargetResultOut
from ..submit import accepted, audited_submit, idempotency_header, submit

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=JobListOut, responses=documented(401))
def list_jobs(request: Request, who: Principal = Depends(principal),
              state: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=1_000_000)) -> JobListOut:
    """The jobs this key may read, newest first (``read``: all; ``submit``: its own); filter by state."""
    services = request.app.state.services
    records = [r for r in services.store.all() if not r.is_patient_task and may_read(who, r)
               and (state is None or r.state == state)]
    records.reverse()
    page = records[offset:offset + limit]
    services.audit.write(who, "job.list", count=len(page))
    return JobListOut(jobs=[JobOut.of(r) for r in page], total=len(records), limit=limit, offset=offset)


@router.post("", status_code=202, response_model=JobOut, responses=documented(400, 401, 403, 404, 409, 413, 422))
async def create_job(request: Request, body: JobIn, response: Response, who: Principal = Depends(require("submit")),
                     idempotency_key: str | None = idempotency_header("job")):
    """Submit a job: prior (image + contour) and follow-ups, by upload id. 202 + Location;
    a replay of an Idempotency-Key with the same body answers 200 with the same job."""
    services = request.app.state.services
    record, replayed = await audited_submit(services, who, "job.submit", submit, body, idempotency_key)
    services.audit.write(who, "job.submit", job_id=record.id, outcome="replayed" if replayed else "ok")
    return accepted(response, JobOut.of(record), f"/v1/jobs/{record.id}", replayed)


@router.get("/{job_id}", response_model=JobOut, responses=documented(401, 403, 404))
def get_job(request: Request, job_id: str, record: ReadJob, who: Principal = Depends(principal)) -> JobOut:
    """State (queued, running, succeeded, failed, cancelled), stage, progress, model, warnings, error."""
    request.app.state.services.audit.write(who, "job.read", job_id=job_id, state=record.state)
    return JobOut.of(record)


def _finished(record: JobRecord) -> None:
    if record.purged_at:
        raise Problem(410, f"job {record.id} was purged (deleted or past retention); its results are gone", slug="purged")
    if record.state != SUCCEEDED:
        raise Problem(409, f"job {record.id} is {record.state}; results exist once it has succeeded",
                      slug="not-finished", state=record.state)


@router.get("/{job_id}/results", response_model=ResultsOut, responses=documented(401, 403, 404, 409, 410))
def get_results(request: Request, job_id: str, record: ReadResults, who: Principal = Depends(principal)) -> ResultsOut:
    """Per target: found, volume, QC review flag, flagged slices, warnings, artifacts (size, sha256, url)."""
    _finished(record)
    request.app.state.services.audit.write(who, "results.read", job_id=job_id)
    summary = record.summary or {}
    targets = [TargetResultOut.of(t, f"/v1/jobs/{job_id}/artifacts/{t.target}") for t in record.results or []]
    return ResultsOut(job_id=job_id, model={**summary.get("model", {}), "requested": record.model.requested},
                      method=summary.get("method"), targets=targets)


@router.post("/{job_id}/deliveries", status_code=202, response_model=DeliveriesOut, responses=documented(401, 403, 404, 409, 410, 422))
def post_deliveries(request: Request, job_id: str, body: DeliveriesIn, record: DeliverJob,
                    who: Principal = Depends(principal)) -> DeliveriesOut:
    """Send the job's RTSTRUCT + SEGs to DICOM destinations (new ones are added to the job) or
    re-send refused / failed deliveries (``again``: delivered ones too). 202: the DICOM sender
    (`p2sam dicom-listener` / `dicom-send`) sends them on its next round; the job's
    ``deliveries`` shows each one's state."""
    from dicomnet.gateway import Gateway
    from dicomnet.peers import PeerError

    services = request.app.state.services
    _finished(record)
    gateway = Gateway(services.settings, services.store)
    try:
        due = gateway.request(record, body.destinations, again=body.again)
    except PeerError as exc:
        services.audit.write(who, "job.deliveries", job_id=job_id, outcome="rejected", status=422)
        raise Problem(422, str(exc), slug="unknown-peer") from None
    services.audit.write(who, "job.deliveries", job_id=job_id, destinations=body.destinations, again=body.again,
                         requeued=len(due))
    shown = (services.store.get(job_id) or record).deliveries
    return DeliveriesOut(job_id=job_id, requeued=due, deliveries=[DeliveryOut.of(d) for d in shown])


@router.get("/{job_id}/artifacts/{target}/{name}", responses={
    200: {"description": "the file: its media type as listed in /results (RTSTRUCT and SEG application/dicom, "
                         "NIfTI application/gzip, preview image/png, result.json application/json)",
          "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in sorted({*MEDIA_TYPES.values(), "application/octet-stream"})}},
    304: {"description": "not modified"},
    **documented(401, 403, 404, 409, 410)})
def get_artifact(request: Request, job_id: str, target: str, name: str, record: DownloadArtifact,
                 who: Principal = Depends(principal), if_none_match: str | None = Header(None, alias="If-None-Match")):
    """Download one result file; ETag = its sha256 (If-None-Match -> 304)."""
    _finished(record)
    entry = next((a for t in record.results or [] if t.target == target for a in t.artifacts if a.name == name), None)
    if entry is None:
        raise Problem(404, f"job {job_id} has no artifact '{name}' for target '{target}' (see its /results)", slug="artifact-not-found")
    folder = next(t for t in record.targets if t == target)  # the job's own name, not the URL segment
    root = request.app.state.services.store.results_dir(job_id).resolve()
    path = (root / folder / entry.name).resolve()
    if root not in path.parents or not path.is_file():  # names come from the manifest; belt and braces
        raise Problem(404, f"artifact '{name}' of target '{target}' is missing", slug="artifact-not-found")
    etag = f'"{entry.sha256}"'
    if if_none_match and etag in [v.strip() for v in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    request.app.state.services.audit.write(who, "artifact.download", job_id=job_id, target=target, artifact=name)
    return FileResponse(path, media_type=entry.media_type, filename=f"{target}_{entry.name}",
                        headers={"ETag": etag, "Cache-Control": "private, no-store"})


@router.delete("/{job_id}", response_model=JobOut, responses={202: {"model": JobOut, "description": "cancelling"},
                                                               **documented(401, 403, 404)})
def delete_job(request: Request, job_id: str, record: DeleteJob, who: Principal = Depends(principal)):
    """Cancel (if queued or running) and purge the job's inputs and outputs; audited.

    200 when done; 202 while a running job is being stopped (its worker purges it when it stops)."""
    services = request.app.state.services
    store = services.store
    status = 200
    if record.state == QUEUED:
        store.transition(job_id, CANCELLED, {QUEUED}, reason=f"deleted by {who.name}", message="cancelled")

    def request_purge(r: JobRecord) -> None:
        if r.state in (QUEUED, RUNNING):
            r.cancel_requested = True  # the worker stops at its next check, then purges
        r.purge_requested = True

    record = store.update(job_id, request_purge) or record
    if record.state in TERMINAL:
        record = store.purge(job_id, f"deleted by {who.name}") or record
    else:
        status = 202
    services.audit.write(who, "job.delete", job_id=job_id, state=record.state, purged=record.purged_at is not None)
    return JSONResponse(JobOut.of(record).model_dump(mode="json"), status_code=status)
