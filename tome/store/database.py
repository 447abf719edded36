"""Database: one SQLAlchemy engine and its sessions. A SQLite file under the data directory
by default ($TOME_DATA_DIR, else $XDG_DATA_HOME/tome, else ~/.local/share/tome); any
SQLAlchemy URL (Postgres, say) by configuration. Tables are created on first use."""

import os
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from tome.loader.error_text import one_line
from tome.store.errors import StoreError
from tome.store.models import Base

DATA_DIR_ENV = "TOME_DATA_DIR"
SQLITE_BUSY_TIMEOUT_S = 30  # the CLI and the server write the same file


def data_dir() -> Path:
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "tome"


def default_database_url() -> str:
    return f"sqlite:///{data_dir() / 'tome.db'}"


class Database:
    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_database_url()
        try:
            self.engine = _create_engine(self.url)
            Base.metadata.create_all(self.engine)
            _add_missing_indexes(self.engine)
        except (ArgumentError, SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot open the database {self.url}: {one_line(exc)}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()


def _add_missing_indexes(engine: Engine) -> None:
    """Indexes added to a table after a database was made (create_all makes only missing
    tables, not their new indexes)."""
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            index.create(engine, checkfirst=True)


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(connection, _record) -> None:
    # WAL lets the CLI read usage while the server writes it; foreign keys are off by default.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
