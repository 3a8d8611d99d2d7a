"""Shared fixtures: a real temporary data dir and SQLite database per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from db.engine import Database, open_database
from vqa_engine.simulator import SimulatorConfig, SimulatorServer


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    monkeypatch.setenv("VQA_DATA_DIR", str(directory))
    monkeypatch.delenv("VQA_DATABASE_URL", raising=False)
    for name in ("VQA_BASE_URL", "VQA_MODEL", "VQA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return directory


@pytest.fixture
def database(data_dir: Path) -> Iterator[Database]:
    db = open_database(f"sqlite:///{data_dir / 'vqa.db'}")
    yield db
    db.close()


@pytest.fixture
def storage_snapshot(database: Database, data_dir: Path) -> Callable[[], dict[str, object]]:
    """A callable capturing the data dir (every file and folder, with content hashes, except
    the SQLite files) and the row count of every table, to prove a failure changed nothing."""
    import hashlib

    from sqlalchemy import func, select

    from db.models import Base

    def capture() -> dict[str, object]:
        entries = sorted(data_dir.rglob("*"))
        files = {
            path.relative_to(data_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in entries
            if path.is_file() and not path.name.startswith("vqa.db")
        }
        folders = [path.relative_to(data_dir).as_posix() for path in entries if path.is_dir()]
        with database.read() as session:
            rows = {
                table.name: session.scalar(select(func.count()).select_from(table))
                for table in Base.metadata.sorted_tables
            }
        return {"files": files, "folders": folders, "rows": rows}

    return capture


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    """A running SIMULATED endpoint (latency 0-5 ms); `.base_url`, `.stats`, `.reconfigure()`."""
    with SimulatorServer(SimulatorConfig(latency_ms=2.5, jitter_ms=2.5, seed=0)) as server:
        yield server


POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def postgres_database() -> Iterator[Database]:
    """A fresh schema in the local PostgreSQL, dropped afterwards; skipped where there is none."""
    try:
        probe = Database(POSTGRES_URL)
        with probe.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means: no server here
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 ({type(exc).__name__})")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with probe.engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    probe.close()
    database = open_database(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    try:
        yield database
    finally:
        database.close()
        cleanup = Database(POSTGRES_URL)
        with cleanup.engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        cleanup.close()
