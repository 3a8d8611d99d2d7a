"""Where the data lives and how to open it.

`VQA_DATA_DIR` (default `./data`) holds images, uploads and exports; `VQA_DATABASE_URL`
(default: SQLite `vqa.db` in the data dir) holds everything else.

SQLite is opened in WAL mode with a busy timeout and foreign keys on. Python's sqlite3
driver would begin transactions lazily with a plain `BEGIN`, which lets two writers both
read and then fail with "database is locked" on upgrade; so the driver's own transaction
handling is switched off and we emit `BEGIN` ourselves: `BEGIN IMMEDIATE` on the write
engine (`Database.writer`), deferred `BEGIN` for readers, which WAL never blocks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_DATA_DIR = "./data"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "vqa_write"


def data_dir() -> Path:
    return Path(os.environ.get("VQA_DATA_DIR") or DEFAULT_DATA_DIR).resolve()


def database_url(data: Path | None = None) -> str:
    url = os.environ.get("VQA_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{(data or data_dir()) / 'vqa.db'}"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, **kwargs)


@dataclass
class Database:
    """One owner for the engine and its two session factories.

    `read()` sessions are for queries; `write()` sessions take the write lock up front
    (SQLite) and commit on success, roll back on error.
    """

    url: str
    engine: Engine = field(init=False)
    _reader: sessionmaker[Session] = field(init=False, repr=False)
    _writer: sessionmaker[Session] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.engine = make_engine(self.url)
        writer_engine = self.engine.execution_options(**{_WRITE_OPTION: True})
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(writer_engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._writer() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


def open_database(url: str | None = None, *, upgrade: bool = True) -> Database:
    """Open the database (default from the environment) and bring its schema up to date."""
    database = Database(url or database_url())
    if upgrade:
        from db.migrate import upgrade_schema

        upgrade_schema(database.engine)
    return database
