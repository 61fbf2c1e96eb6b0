"""GET /review: the review page (one static HTML file, vanilla JS; no build step).

The page itself needs no key; it asks for one and sends it as X-API-Key with every API call,
so it sees and may do exactly what the key may (list jobs and batches, previews, downloads,
accept / reject targets).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

PAGE = Path(__file__).resolve().parents[1] / "static" / "review.html"
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; script-src 'self' 'unsafe-inline'; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(tags=["review"])


@router.get("/review", include_in_schema=False)
def review_page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers=HEADERS)
