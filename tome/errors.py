"""Typed errors. Each carries a one-line message meant for a person; the server maps them
to OpenAI-style JSON errors using `status_code`."""


class TomeError(Exception):
    """Base of every error Tome raises on purpose."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(TomeError):
    """The caller asked for something malformed (bad sampling parameters, empty prompt)."""

    status_code = 400
    error_type = "invalid_request_error"


class PromptTooLongError(InvalidRequestError):
    """The prompt does not fit the model window or the KV pool."""


class KVCacheCapacityError(PromptTooLongError):
    """The prompt needs more KV blocks than the whole pool holds."""


class ModelLoadError(TomeError):
    """Model files are missing, corrupt, or describe something we cannot load."""

    status_code = 500
    error_type = "model_load_error"


class UnsupportedArchitectureError(ModelLoadError):
    """The model's architecture has no implementation in tome/models."""


class RequestAbortedError(TomeError):
    """The request was aborted before it finished."""

    status_code = 499
    error_type = "request_aborted"


class ContextCacheNotFoundError(TomeError):
    """No cached context has that name, or it has expired."""

    status_code = 404
    error_type = "not_found_error"
