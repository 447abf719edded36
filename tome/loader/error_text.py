"""Turning third-party exceptions into the one-line messages our typed errors carry."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors often run to a page)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
