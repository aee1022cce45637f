"""Errors as the OpenAI API returns them: `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can cause becomes an `APIError` (or is mapped to one by the handlers
installed here), so the server answers 400/401/404 with an error object instead of FastAPI's
422 or a bare 500, and one bad request never affects another. A 500 names a request id and
nothing of the failure: the exception is logged under that id.
"""
from __future__ import annotations

import logging
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from octavo.engine.async_engine import EngineDeadError, RequestFailedError
from octavo.engine.llm_engine import InputError
from octavo.sampling_params import SamplingParamError

logger = logging.getLogger("octavo.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, type: str | None = None, request_id: str | None = None):
        super().__init__(message)
        self.message = _encodable(message)  # it may quote client text: a lone surrogate must not break it
        self.status = status
        self.param = None if param is None else _encodable(param)
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.request_id = request_id

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"x-request-id": self.request_id} if self.request_id else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(message, status=400, param=param, code=code)


def from_exception(exc: BaseException, request_id: str | None = None) -> APIError:
    """The API error for an exception raised while preparing or serving request `request_id`."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, SamplingParamError):
        return bad_request(str(exc), exc.param)
    if isinstance(exc, InputError):
        return bad_request(str(exc), exc.param)
    if isinstance(exc, ValidationError):
        return validation_error(exc.errors())
    if isinstance(exc, EngineDeadError):
        return APIError("the engine has stopped; the server is shutting down", status=503, request_id=request_id)
    if isinstance(exc, RequestFailedError):  # the engine logged the cause under this id
        request_id = exc.request_id
    else:
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        logger.error("request %s failed: %s: %s", request_id, type(exc).__name__, exc, exc_info=exc)
    return APIError(f"The server had an error while processing your request (request id {request_id}). "
                    "Its log has the details.", status=500, request_id=request_id)


LONE_SURROGATE = "lone_surrogate"  # the pydantic error type of text that is not valid Unicode


def validation_error(errors) -> APIError:
    """A 400 for pydantic errors (malformed JSON included), naming the first bad field."""
    errors = list(errors)
    if not errors:
        return bad_request("invalid request")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == LONE_SURROGATE:
        return bad_request(first["msg"], first["ctx"]["param"])
    if first.get("type") == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first.get('msg', '')}", code="invalid_json")
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing" and not loc:
        message = "the request body is missing"
    elif first.get("type") == "missing":
        message = f"missing required parameter: {param!r}"
    elif param:
        message = f"invalid value for {param!r}: {msg}"
    else:
        message = f"the request body must be a JSON object ({msg})"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return bad_request(message, param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        status = exc.status_code
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        message = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else phrase
        return APIError(message, status=status).response()

    @app.exception_handler(SamplingParamError)
    @app.exception_handler(InputError)
    @app.exception_handler(ValidationError)
    async def _input(_: Request, exc: Exception):
        return from_exception(exc).response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        return from_exception(exc).response()
