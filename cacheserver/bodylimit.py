"""Refusing oversize REST bodies with 413 before reading them.

``BodyLimit`` (ASGI middleware) answers 413 to any request whose ``Content-Length`` is
over the limit; ``read_body`` reads a streamed body (no length given) and stops with 413
as soon as it grows past the limit, so no request can make the server buffer more.
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.refused = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                self.refused += 1
                response = JSONResponse({"detail": f"request body over the limit of {self.max_bytes} B "
                                         "(or a malformed Content-Length)"}, status_code=413)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


async def read_body(request: Request, max_bytes: int) -> bytearray:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPException(413, f"request body over the limit of {max_bytes} B")
    return body
