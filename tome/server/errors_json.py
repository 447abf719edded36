"""Every error as OpenAI does it: {"error": {"message", "type", "param", "code"}} with the
right status, and Retry-After where waiting helps. A bad request costs one clear error."""

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tome.errors import TomeError
from tome.server.schemas.common import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)


def error_body(exc: TomeError) -> ErrorResponse:
    code = getattr(exc, "code", None)
    return ErrorResponse(error=ErrorDetail(message=exc.message, type=exc.error_type, code=code))


def error_response(exc: TomeError) -> JSONResponse:
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return JSONResponse(error_body(exc).model_dump(), exc.status_code, headers=headers)


def _plain(status: int, message: str, error_type: str, code: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=error_type, code=code))
    return JSONResponse(body.model_dump(), status)


def validation_message(exc: RequestValidationError) -> str:
    """One line naming the first bad field, e.g. "max_tokens: Input should be ..."."""
    errors = exc.errors()
    if not errors:
        return "the request body is invalid"
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "not JSON")
        return f"the request body is not valid JSON: {detail}"
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if not location and first.get("type") in ("model_attributes_type", "dict_type"):
        return "the request body must be a JSON object (sent as application/json)"
    # Unions report one error per member; the member's name is noise to a caller.
    field = ".".join(p for p in location if not p.startswith(("constrained-", "function-")))
    if first.get("type") == "missing":
        return f"{field} is required"
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{field}: {message}{more}" if field else f"{message}{more}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TomeError)
    async def tome_error(_: Request, exc: TomeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _plain(400, validation_message(exc), "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _plain(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _plain(500, f"internal error: {type(exc).__name__}", "internal_error")
