"""Pure ASGI middleware (no BaseHTTPMiddleware: it would get in the way of streaming and of
noticing client disconnects): the API-key check and JSON bodies whatever the content type."""
from __future__ import annotations

import hmac

from octavo.server.errors import APIError


class APIKeyMiddleware:
    """401 for /v1/* requests without `Authorization: Bearer <key>` (as vLLM's --api-key)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = APIError("Incorrect or missing API key: pass it as 'Authorization: Bearer <key>'",
                                    status=401, code="invalid_api_key").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class JSONBodyMiddleware:
    """Treat POST bodies as JSON when the client sent no (or another) content type, as the
    OpenAI API does: `curl -d '{...}'` works without -H 'Content-Type: application/json'."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            ctype = dict(scope["headers"]).get(b"content-type", b"")
            if b"json" not in ctype.lower():
                scope = dict(scope, headers=headers + [(b"content-type", b"application/json")])
        await self.app(scope, receive, send)
