"""Every error as OpenAI does it: {"error": {"message", "type", "param", "code"}} with the
right status, and Retry-After where waiting helps. A bad request costs one clear error."""

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from tome.errors import TomeError
from tome.server.schemas.common import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)

# What each status means here; every one of them answers with the error object.
ERROR_STATUSES = {
    400: "The request is invalid: a body that is not JSON, a field out of its range, a prompt "
    "over the context window.",
    401: "No API key, or one that is not valid (keyed mode only).",
    403: "The key's tier is not configured on this server.",
    404: "Unknown (or another key's) model, file, conversation, attachment, context cache or "
    "cache tag; a context cache that was deleted or has expired.",
    413: "The upload or fetched page is over the tier's size limit.",
    415: "The file's format cannot be read.",
    429: "Over one of the tier's limits (rates, daily quota, tokens pinned in context caches); "
    "Retry-After, when waiting helps, says when to retry.",
    502: "A fetched web page could not be had.",
    503: "The server is overloaded (Retry-After says when to retry) or the engine failed.",
    504: "A web page or search took too long.",
}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """The `responses=` of a route: each status it answers with the error object."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_STATUSES[status]}
        for status in statuses
    }


AUTHENTICATED = error_responses(401, 403)  # every route behind `authenticate`
WITH_BODY = error_responses(400, 401, 403)  # ... that reads a body or query
BY_ID = error_responses(401, 403, 404)  # ... that looks a record up
BODY_BY_ID = error_responses(400, 401, 403, 404)  # ... by id, with a body or query
GENERATING = error_responses(400, 401, 403, 404, 429, 503)  # admitted, then generated


def error_body(exc: TomeError) -> ErrorResponse:
    code = getattr(exc, "code", None)
    return ErrorResponse(error=ErrorDetail(message=exc.message, type=exc.error_type, code=code))


def error_response(exc: TomeError) -> JSONResponse:
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return JSONResponse(error_body(exc).model_dump(), exc.status_code, headers=headers)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method some route of this path answers: Starlette's own 405 names only the
    first matching route's, and a path here often has several (GET and POST, ...)."""
    allowed = []
    for method in HTTP_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


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
    # The first part says where (body, query, path); the field's name says enough.
    location = [str(part) for part in first.get("loc", ())[1:]]
    if not location and first.get("type") in ("model_attributes_type", "dict_type"):
        return "the request body must be a JSON object (sent as application/json)"
    # Unions report one error per member; the member's name is noise to a caller.
    field = ".".join(p for p in location if not p.startswith(("constrained-", "function-")))
    if first.get("type") == "missing":
        return f"{field} is required" if field else "the request body is required"
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{field}: {message}{more}" if field else f"{message}{more}"


def install_error_handlers(app: FastAPI) -> None:
    install_openapi(app)

    @app.exception_handler(TomeError)
    async def tome_error(_: Request, exc: TomeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _plain(400, validation_message(exc), "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        response = _plain(exc.status_code, str(exc.detail), kind)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = allowed_methods(request)
        return response

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _plain(500, f"internal error: {type(exc).__name__}", "internal_error")


def install_openapi(app: FastAPI) -> None:
    """The schema says what the handlers above answer: no route answers FastAPI's 422 (a
    validation error is a 400 with the error object)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            error = {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    responses.pop("422", None)
                    # A route's response_class (text/plain) is not its errors' media type.
                    for status, response in responses.items():
                        content = response.get("content", {})
                        if status[0] in "45" and content and "application/json" not in content:
                            response["content"] = {"application/json": error}
            schemas = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
        return app.openapi_schema

    app.openapi = openapi
