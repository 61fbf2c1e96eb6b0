"""/healthz (the process answers) and /readyz (it can take and run jobs). No key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from ..problems import documented, problem_response
from ..schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=documented(503), summary="Ready to run jobs")
async def readyz(request: Request):
    """Job store writable; broker mode: broker reachable and a worker answering whose pool process has
    loaded the model (cached 5 s); embedded mode: the in-process worker thread alive."""
    ok, checks = await run_in_threadpool(request.app.state.services.readiness)
    if ok:
        return Health(status="ready", checks=checks)
    missing = [k for k, v in checks.items() if not v]
    return problem_response(503, f"not ready: {', '.join(missing)}", type_="/problems/not-ready", checks=checks)
