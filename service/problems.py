"""RFC 7807 problem details (``application/problem+json``) for every error the API returns.

Routes raise :class:`Problem`; HTTP errors from the framework (404, 405), validation errors
and unexpected exceptions are turned into the same shape here. A response never carries a
stack trace: unexpected errors are logged server-side and answered with a short 500.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("p2sam.service")
MEDIA_TYPE = "application/problem+json"

_TITLES = {400: "Bad request", 401: "Authentication required", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 406: "Not acceptable", 409: "Conflict", 410: "Gone", 411: "Length required",
           413: "Request too large", 415: "Unsupported media type", 422: "Invalid input",
           500: "Internal error", 501: "Not implemented", 503: "Service unavailable"}


class ProblemModel(BaseModel):
    """What every error body looks like (RFC 7807); extra members may follow."""

    model_config = ConfigDict(extra="allow")
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class Problem(Exception):
    """An error to answer with problem+json: ``raise Problem(404, "job not found", slug="not-found")``."""

    def __init__(self, status: int, detail: str, *, title: str | None = None, slug: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.title = title or _TITLES.get(status, "Error")
        self.type = f"/problems/{slug}" if slug else "about:blank"
        self.headers, self.extra = headers or {}, extra


def problem_response(status: int, detail: str | None, *, title: str | None = None, type_: str = "about:blank",
                     instance: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": type_, "title": title or _TITLES.get(status, "Error"), "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method the API offers on this path, from its OpenAPI (Starlette names only the
    methods of the first route that matched the path)."""
    import re

    path = request.url.path
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path):
            methods |= {m.upper() for m in operations}
    return ", ".join(sorted(methods)) or "none"


def _location(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if part not in ("body",)) or "body"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, title=exc.title, type_=exc.type, instance=request.url.path,
                                headers=exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404 and detail in (None, "Not Found"):
            detail = f"no such resource: {request.method} {request.url.path} (see /docs)"
        headers = exc.headers
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            headers = {**{k: v for k, v in (exc.headers or {}).items() if k.lower() != "allow"}, "Allow": allowed}
            detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        return problem_response(exc.status_code, detail, instance=request.url.path, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"location": _location(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in exc.errors()]
        first = errors[0] if errors else {"location": "request", "message": "invalid"}
        return problem_response(422, f"{first['location']}: {first['message']}", type_="/problems/validation",
                                instance=request.url.path, errors=errors[:20])

    async def _classified(request: Request, exc: Exception) -> JSONResponse:
        from p2sam.errors import INTERNAL, classify, public_detail

        meaning = classify(exc)  # the one table shared with the CLI and the worker
        route = request.scope.get("route_path", request.url.path)
        if meaning is INTERNAL:
            log.error("unhandled %s on %s %s", type(exc).__name__, request.method, route, exc_info=exc)
        else:
            log.error("%s on %s %s (%s)", meaning.title.lower(), request.method, route, type(exc).__name__)
        headers = {"Retry-After": "30"} if meaning.status == 503 else None
        return problem_response(meaning.status, public_detail(exc, meaning), title=meaning.title,
                                type_=f"/problems/{meaning.slug}", headers=headers)

    async def _disconnected(request: Request, exc: Exception) -> JSONResponse:
        # The client went away mid-request (e.g. a cancelled upload): one calm line, no traceback.
        log.info("client disconnected during %s %s", request.method, request.scope.get("route_path", request.url.path))
        return problem_response(400, "the client disconnected before the request was complete", type_="/problems/disconnected")

    # Known kinds by class (handled inside the app, so the server does not log them again), and the
    # last resort for everything else (Starlette re-raises those to the server after answering).
    app.add_exception_handler(ClientDisconnect, _disconnected)
    for kind in (OSError, ValueError, MemoryError, Exception):
        app.add_exception_handler(kind, _classified)


# responses= entry for routes: documents the problem+json error shape in the OpenAPI.
def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ProblemModel, "description": _TITLES.get(s, "Error")} for s in statuses}


def _possible(path: str, operation: dict[str, Any]) -> list[int]:
    """Statuses every operation of its kind may answer, whatever the route: a malformed request
    (400, 422), a body too large or too slow (413, 408), storage read-only or full (503), a bug
    (500); under /v1 a missing key or scope (401, 403); a purged job's or batch's data (410)."""
    statuses = [400, 422, 500, 503]
    if "requestBody" in operation:
        statuses += [408, 413]
    if path.startswith("/v1/"):
        statuses += [401, 403]
    if "{job_id}" in path or "{batch_id}" in path:
        statuses += [404, 410]
    return statuses


def document_problems(app: FastAPI, refine: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Make the OpenAPI say what the API does: every 4xx/5xx response is problem+json
    (FastAPI's own 422 schema is replaced, since validation errors are problems here too);
    ``refine(spec)`` then narrows it further in place (service/openapi_deployment.py)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas["ProblemModel"] = ProblemModel.model_json_schema(ref_template="#/components/schemas/{model}")
        ref = {"$ref": "#/components/schemas/ProblemModel"}
        for path, operations in spec.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status in _possible(path, operation):  # what any such operation may answer
                    responses.setdefault(str(status), {"description": _TITLES.get(status, "Error")})
                for status, response in responses.items():
                    if status[:1] in ("4", "5"):
                        response["content"] = {MEDIA_TYPE: {"schema": ref}}
                        if status == "422":
                            response["description"] = "Invalid input"
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        if refine is not None:
            refine(spec)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
