"""The FastAPI application: ``create_app(settings)``.

Thin by design: routes validate, authorise, audit and delegate to the job store, the upload
store and :func:`p2sam.runner.execute_job` (through Celery or the embedded thread). OpenAPI at
/openapi.json, interactive docs at /docs.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

import p2sam
from p2sam.settings import Settings, get_settings

from . import problems
from .middleware import BodySizeLimit, SecurityHeaders
from .openapi_deployment import describe_deployment
from .routes import ROUTERS
from .services import Services

DESCRIPTION = """Patient-adaptive segmentation of follow-up scans (P²SAM on Segment Anything).

1. `POST /v1/uploads` the prior (DICOM series + RTSTRUCT, as a zip or multipart files) and each follow-up;
2. `POST /v1/jobs` with their upload ids (`Idempotency-Key` makes retries safe) -> 202 + `Location`;
3. poll `GET /v1/jobs/{id}` until `succeeded`;
4. `GET /v1/jobs/{id}/results` lists each target's QC and artifacts (RTSTRUCT, SEG, NIfTI, samples, preview)
   with sha256; download them from `/v1/jobs/{id}/artifacts/{target}/{name}`;
5. `DELETE /v1/jobs/{id}` cancels and purges the patient's data.

Batches (many patients x visits, one task per patient on the batch queue, resumable): `POST /v1/batches`
with a manifest of upload ids, `GET /v1/batches/{id}` for progress, `/report` and `/report.csv` when done.
Clinicians review results at `/review` (accept / reject per target: `POST /v1/jobs/{id}/reviews`).

Every request needs an API key (`X-API-Key` or `Authorization: Bearer`); errors are RFC 7807 problem+json.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from P2SAM_ environment variables)."""
    settings = settings or get_settings()
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services.start()
        logging.getLogger("p2sam.service").info(
            "API ready (%s mode, auth %s)", "broker" if settings.broker_url else "embedded", settings.auth)
        yield
        services.stop()

    app = FastAPI(title="P²SAM segmentation service", version=p2sam.__version__, description=DESCRIPTION,
                  lifespan=lifespan, openapi_url="/openapi.json", docs_url=None, redoc_url=None)
    _offline_docs(app)
    app.state.services = services
    problems.install(app)
    problems.document_problems(app, refine=lambda spec: describe_deployment(spec, services))
    app.add_middleware(BodySizeLimit, upload_limit=settings.max_upload_mb * (1 << 20),
                       body_timeout=settings.request_body_timeout_s)
    app.add_middleware(SecurityHeaders)  # outermost: the size limit's own 413s get the headers too
    for router in ROUTERS:
        app.include_router(router)
    return app


def _offline_docs(app: FastAPI) -> None:
    """/docs with Swagger UI served from this process (hospital networks are often offline)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="P²SAM API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory service.app:app_from_env``."""
    return create_app()
