"""The store's typed error: the database cannot be opened, or a record asked for is absent."""

from tome.errors import TomeError


class StoreError(TomeError):
    """The database is unreachable or malformed, or a key asked for does not exist."""

    status_code = 500
    error_type = "store_error"
