"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with string codes.

Routes raise `ApiError`; `install_error_handlers` turns it, request validation failures,
unknown routes and any unexpected exception into that shape, so that no client ever sees a
framework's own error format.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from polydistill.serve.metering.storage import is_unavailable

log = logging.getLogger("polydistill.serve")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponseDoc(BaseModel):
    """The error body, for the OpenAPI document."""

    error: ErrorDetail


class ApiError(Exception):
    """An error response. `headers` are added to it (Retry-After and the like)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    location = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return bad_request("the request body is not valid JSON", code="invalid_json").response()
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return bad_request(message, param=param).response()


_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    status = error.status_code
    code = _STATUS_CODES.get(status, "invalid_request")
    kind = "invalid_request_error" if status < 500 else "server_error"
    return ApiError(status, str(error.detail), type=kind, code=code).response()


def database_unavailable() -> ApiError:
    """The 503 of a request the gateway could not meter because its database is down."""
    return ApiError(
        503,
        "the gateway's database is unavailable; retry later",
        type="server_error",
        code="database_unavailable",
        headers={"retry-after": "1"},
    )


def unexpected_error_response(error: Exception) -> JSONResponse:
    """A 503 in the OpenAI shape when the database cannot be reached, else a 500 for an error
    nobody expected (the traceback goes to the log). Neither body says more: driver messages
    name hosts and statements."""
    if is_unavailable(error):
        log.warning("database unavailable: %s", type(error).__name__)
        return database_unavailable().response()
    log.exception("unhandled error", exc_info=error)
    return ApiError(500, "internal error", type="server_error", code="internal_error").response()


def _unexpected(_: Request, error: Exception) -> JSONResponse:
    return unexpected_error_response(error)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, lambda _, error: error.response())  # type: ignore[arg-type, union-attr]
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
