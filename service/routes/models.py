"""GET /v1/models: the models on offer (name, backbone, checksum, model card)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from ..auth import Principal, principal
from ..problems import documented
from ..schemas import ModelOut

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=list[ModelOut], responses=documented(401))
async def list_models(request: Request, who: Principal = Depends(principal)) -> list[dict]:
    """Every offered model: bundled weights and P2SAM_MODELS_DIR. Any valid key may list them."""
    pool = request.app.state.services.model_pool()
    return await run_in_threadpool(pool.describe)
