"""The server's typed errors. Each maps to an OpenAI-style JSON error (`errors_json.py`):
status_code, error_type, and a `code` naming what failed (a limit, a model)."""

from tome.errors import InvalidRequestError, TomeError


class ServerConfigError(TomeError):
    """The server cannot start as configured (an open server off localhost, a bad TOML)."""

    error_type = "server_config_error"


class AuthenticationError(TomeError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(TomeError):
    status_code = 403
    error_type = "permission_error"
    code = "tier_not_configured"


class ModelNotFoundError(TomeError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class ContextLimitError(InvalidRequestError):
    """Prompt and answer do not fit the model window or the caller's tier."""

    code = "context_length_exceeded"


class RateLimitError(TomeError):
    """Over one of the tier's limits; `code` names it, `retry_after` says when to retry
    (None: waiting alone will not help)."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, code: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class OverloadedError(TomeError):
    """The estimated queue wait exceeds what the caller's tier accepts."""

    status_code = 503
    error_type = "overloaded_error"
    code = "server_overloaded"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GenerationError(TomeError):
    """The engine ended a request with an error of its own (no room left in the KV pool)."""

    status_code = 503
    error_type = "engine_error"
