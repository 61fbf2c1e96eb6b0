"""Batches: many patients x visits on the ``batch`` queue, one task per patient.

POST (with Idempotency-Key), list, status with progress per patient, report (JSON / CSV), the
per-patient volume plot, cancel + purge. Access as for jobs (service.access): ``read`` reads any
batch; ``submit`` submits and reads / deletes its own; ``admin`` everything. Every access is audited.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from p2sam.jobstore import TERMINAL

from ..access import DeleteBatch, ReadBatch, ReadBatchReport, may_read
from ..auth import Principal, principal, require
from ..batch_schemas import BatchIn, BatchListOut, BatchOut
from ..batch_submit import submit_batch
from ..submit import accepted, audited_submit, idempotency_header
from ..problems import Problem, documented

router = APIRouter(prefix="/v1/batches", tags=["batches"])
State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _out(request: Request, record: dict) -> BatchOut:
    return BatchOut.of(record, request.app.state.services.batches.progress(record))


@router.post("", status_code=202, response_model=BatchOut, responses=documented(400, 401, 403, 404, 409, 413, 422))
async def create_batch(request: Request, body: BatchIn, response: Response, who: Principal = Depends(require("submit")),
                       idempotency_key: str | None = idempotency_header("batch")):
    """Submit a batch: per patient a prior (image + contour) and visits in order, by upload id, optionally
    with ground-truth masks; one task per patient runs on the batch queue. 202 + Location."""
    services = request.app.state.services
    record, replayed = await audited_submit(services, who, "batch.submit", submit_batch, body, idempotency_key)
    services.audit.write(who, "batch.submit", batch_id=record.id, outcome="replayed" if replayed else "ok",
                         patients=len(record.patients))
    out = await run_in_threadpool(_out, request, record)
    return accepted(response, out, f"/v1/batches/{record.id}", replayed)


@router.get("", response_model=BatchListOut, responses=documented(401))
def list_batches(request: Request, who: Principal = Depends(principal), state: State | None = None,
                 limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=1_000_000)) -> BatchListOut:
    """The batches this key may read, newest first (``read``: all; ``submit``: its own)."""
    services = request.app.state.services
    records = [r for r in services.batches.all() if may_read(who, r) and (state is None or r.state == state)]
    records.reverse()
    page = records[offset:offset + limit]
    services.audit.write(who, "batch.list", count=len(page))
    return BatchListOut(batches=[_out(request, r) for r in page], total=len(records), limit=limit, offset=offset)


@router.get("/{batch_id}", response_model=BatchOut, responses=documented(401, 403, 404))
def get_batch(request: Request, batch_id: str, record: ReadBatch, who: Principal = Depends(principal)) -> BatchOut:
    """State, overall and per-patient progress (visits done / total, errors, attempts), summary when finished."""
    request.app.state.services.audit.write(who, "batch.read", batch_id=batch_id, state=record.state)
    return _out(request, record)


def _report_file(request: Request, record: dict, who: Principal, name: str) -> tuple[dict, object]:
    batch_id = record.id
    if record.purged_at:
        raise Problem(410, f"batch {batch_id} was purged (deleted or past retention); its report is gone", slug="purged")
    if record.state not in TERMINAL or record.state == "cancelled":
        raise Problem(409, f"batch {batch_id} is {record.state}; its report exists once every patient has finished "
                      f"(GET /v1/batches/{batch_id} shows the progress)", slug="not-finished", state=record.state)
    path = request.app.state.services.batches.folder(batch_id) / name
    if not path.is_file():
        raise Problem(404, f"batch {batch_id} has no {name}", slug="report-not-found")
    request.app.state.services.audit.write(who, "batch.report", batch_id=batch_id, file=name)
    return record, path


@router.get("/{batch_id}/report", responses={200: {"description": "report.json: summary + one row per visit",
                                                   "content": {"application/json": {}}}, **documented(401, 403, 404, 409, 410)})
def get_report(request: Request, batch_id: str, record: ReadBatchReport, who: Principal = Depends(principal)):
    """report.json: per visit volume (+ 90% band of the samples), Dice to the ground truth where given,
    QC flags, timings, errors; summary with mean Dice per patient."""
    _, path = _report_file(request, record, who, "report.json")
    return FileResponse(path, media_type="application/json", headers={"Cache-Control": "private, no-store"})


@router.get("/{batch_id}/report.csv", responses={200: {"description": "one row per visit", "content": {"text/csv": {}}},
                                                 **documented(401, 403, 404, 409, 410)})
def get_report_csv(request: Request, batch_id: str, record: ReadBatchReport, who: Principal = Depends(principal)):
    """report.csv: the same rows as report.json, for spreadsheets."""
    _, path = _report_file(request, record, who, "report.csv")
    return FileResponse(path, media_type="text/csv", filename=f"batch-{batch_id}.csv",
                        headers={"Cache-Control": "private, no-store"})


@router.get("/{batch_id}/plots/{patient}", responses={200: {"description": "PNG", "content": {"image/png": {}}},
                                                      **documented(401, 403, 404, 409, 410)})
def get_plot(request: Request, batch_id: str, patient: str, record: ReadBatchReport,
             who: Principal = Depends(principal)):
    """The patient's structure volume over visits with the samples' 90% band (PNG)."""
    record, _ = _report_file(request, record, who, "report.json")
    if patient not in [p["id"] for p in record.patients]:  # ids come from the manifest, never from the URL
        raise Problem(404, f"batch {batch_id} has no patient '{patient}'", slug="patient-not-found")
    path = request.app.state.services.batches.folder(batch_id) / patient / "volume.png"
    if not path.is_file():
        raise Problem(404, f"no volume plot for patient '{patient}' (none of its visits finished)", slug="plot-not-found")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, no-store"})


@router.delete("/{batch_id}", response_model=BatchOut, responses={202: {"model": BatchOut, "description": "cancelling"},
                                                                   **documented(401, 403, 404)})
def delete_batch(request: Request, batch_id: str, record: DeleteBatch, who: Principal = Depends(principal)):
    """Cancel every patient still queued or running and purge the batch's inputs and outputs; audited.

    200 when done; 202 while running patients are being stopped (purged when they stop)."""
    services = request.app.state.services
    record = services.batches.cancel(batch_id, who.name)
    status = 200 if record.purged_at else 202
    services.audit.write(who, "batch.delete", batch_id=batch_id, state=record.state, purged=status == 200)
    return JSONResponse(_out(request, record).model_dump(mode="json"), status_code=status)
