"""Security headers on every response (ASGI middleware, so streamed files get them too):

- ``X-Content-Type-Options: nosniff`` everywhere: a browser never guesses that a downloaded
  artifact (DICOM, NIfTI, PNG) or a problem body is HTML or script;
- ``Cache-Control: no-store`` on the API's own answers (/v1, /readyz, /healthz) unless a route
  set its own: job states, results and keys' views of patient data are never cached by a proxy.
"""

from __future__ import annotations

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
