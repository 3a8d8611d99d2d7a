"""Shared fixtures: a real temporary data dir and SQLite database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
def simulator() -> Iterator[SimulatorServer]:
    """A running SIMULATED endpoint (latency 0-5 ms); `.base_url`, `.stats`, `.reconfigure()`."""
    with SimulatorServer(SimulatorConfig(latency_ms=2.5, jitter_ms=2.5, seed=0)) as server:
        yield server
