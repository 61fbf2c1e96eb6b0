"""The API's two ASGI middlewares (ASGI, so streamed files get them too).

``BodySizeLimit``: request size and speed limits, enforced while the body streams in (never
after reading it all). A declared ``Content-Length`` over the limit is answered 413 before a byte
of the body is read; a chunked body is counted as it arrives and stopped with 413 as soon as it
passes the limit. Uploads (``/v1/uploads``) may be up to ``P2SAM_MAX_UPLOAD_MB``; every other
request 1 MiB. A body that sends nothing for ``P2SAM_REQUEST_BODY_TIMEOUT_S``, or arrives slower
than ``MIN_RATE`` bytes/s on average once that time has passed (1 byte a second keeps no
connection open for long), is cut off with 408 and the connection closed.

``SecurityHeaders``: security headers on every response:

- ``X-Content-Type-Options: nosniff`` everywhere: a browser never guesses that a downloaded
  artifact (DICOM, NIfTI, PNG) or a problem body is HTML or script;
- ``Cache-Control: no-store`` on the API's own answers (/v1, /readyz, /healthz) unless a route
  set its own: job states, results and keys' views of patient data are never cached by a proxy.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import HTTPException

from .problems import MEDIA_TYPE

OTHER_LIMIT = 1 << 20
MIN_RATE = 1024  # bytes/s, on average, once the body timeout has passed


class BodyTooLarge(HTTPException):
    """Raised from inside ``receive`` when a streaming body passes its limit (-> 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the {_human(limit)} accepted here "
                              f"(P2SAM_MAX_UPLOAD_MB for uploads); split the upload or ask the administrator")


def _human(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


class BodyTooSlow(HTTPException):
    """Raised from inside ``receive`` when a body stalls or trickles in (-> 408)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(408, f"the request body arrived too slowly (nothing for {timeout:g} s, or under "
                              f"{MIN_RATE} bytes/s on average); send it again on a working connection",
                         headers={"Connection": "close"})


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over the limit of their path, 408 for stalled or trickling ones."""

    def __init__(self, app, upload_limit: int, upload_prefix: str = "/v1/uploads", other_limit: int = OTHER_LIMIT,
                 body_timeout: float = 30.0) -> None:
        self.app, self.upload_limit, self.upload_prefix, self.other_limit = app, upload_limit, upload_prefix, other_limit
        self.body_timeout = body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"].startswith(self.upload_prefix) else self.other_limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _reply(send, 400, "Bad request", "Content-Length must be a number of bytes")
            if int(declared) > limit:
                return await _reply(send, 413, "Request too large", BodyTooLarge(limit).detail)
        received = 0
        started = time.monotonic()
        timeout = self.body_timeout

        body_done = False

        async def limited_receive():
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come: wait for it as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise BodyTooSlow(timeout) from None
            if message["type"] != "http.request" or not message.get("more_body"):
                body_done = True
            if message["type"] == "http.request":
                elapsed = time.monotonic() - started
                if message.get("more_body") and elapsed > timeout and received < MIN_RATE * elapsed:
                    raise BodyTooSlow(timeout)
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _reply(send, status: int, title: str, detail: str) -> None:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


NO_STORE_PREFIXES = ("/v1/", "/readyz", "/healthz")


class SecurityHeaders:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        no_store = scope["path"].startswith(NO_STORE_PREFIXES) or scope["path"] == "/v1"

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if no_store and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
