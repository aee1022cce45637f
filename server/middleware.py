"""Pure ASGI middleware (no BaseHTTPMiddleware: it would get in the way of streaming and of
noticing client disconnects): the API-key check, and request bodies that are JSON and not
too large."""
from __future__ import annotations

import hmac

from octavo.server.errors import APIError

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class APIKeyMiddleware:
    """401 without `Authorization: Bearer <key>` on every route but `open_paths` (as vLLM's
    --api-key, which guards /v1 only: here /tokenize, /detokenize, /version, the OpenAPI
    description and, unless the operator opens it, /metrics are guarded too)."""

    def __init__(self, app, api_key: str, open_paths: frozenset[str]):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and scope["path"] not in self.open_paths:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = APIError("Incorrect or missing API key: pass it as 'Authorization: Bearer <key>'",
                                    status=401, code="invalid_api_key").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class RequestBodyMiddleware:
    """Bodies must be `application/json` (415 otherwise: a cross-site form post, sent as
    text/plain without a CORS preflight, must not run generation) and at most `max_bytes`
    long (413). The body is read here, within the limit, and handed on whole."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not _is_json(headers.get(b"content-type", b"")):
            await APIError("the request body must be JSON, sent with 'Content-Type: application/json'",
                           status=415, code="unsupported_media_type").response()(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        body = bytearray()
        if declared is None or int(declared) <= self.max_bytes:  # h11 has checked it is a number
            more = True
            while more and len(body) <= self.max_bytes:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
            if len(body) <= self.max_bytes:
                await self.app(scope, _replay(bytes(body), receive), send)
                return
        await APIError(f"the request body is larger than this server's limit of {self.max_bytes} bytes",
                       status=413, code="request_too_large").response()(scope, receive, send)


def _replay(body: bytes, receive):
    """`receive` for the app: the whole body first, then the client's own messages (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed():
        return pending.pop() if pending else await receive()

    return replayed
