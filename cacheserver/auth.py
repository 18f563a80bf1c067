"""The admin token check for REST mutations: 401 without a token, 403 with a wrong one.

The token comes as ``Authorization: Bearer TOKEN`` or ``X-Admin-Token: TOKEN`` and is
compared in constant time. With no token configured, every request passes.
"""

from __future__ import annotations

import hmac
from collections import Counter

from fastapi import HTTPException, Request


class AdminAuth:
    def __init__(self, token: str):
        self._token = token.encode()
        self.refusals: Counter = Counter()  # "missing" / "wrong" -> requests refused

    def __call__(self, request: Request) -> None:
        if not self._token:
            return
        given = request.headers.get("x-admin-token")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            self.refusals["missing"] += 1
            raise HTTPException(401, "this server needs the admin token for changes and for reading "
                                "blocks: send 'Authorization: Bearer TOKEN'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), self._token):
            self.refusals["wrong"] += 1
            raise HTTPException(403, "the admin token is wrong")
