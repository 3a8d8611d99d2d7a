"""Process-wide resources, created once per server process and shared by every session.

`st.cache_resource` keys them by the database URL, so a test (or a second app in the same
process) pointing at another database gets its own set. Releasing the cache (tests do
`st.cache_resource.clear()`) stops the engine host and closes the database.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import streamlit as st

from db.engine import Database, open_database
from db.queries import DatasetOverview, dataset_overview, flag_names

if TYPE_CHECKING:
    from vqa_engine.host import EngineHost
    from vqa_engine.simulator import SimulatorConfig, SimulatorServer

EMBEDDED_WORKER_ENV = "VQA_EMBEDDED_WORKER"


def _close_database(database: Database) -> None:
    database.close()


def _stop_host(host: EngineHost | None) -> None:
    if host is not None:
        host.stop()


@st.cache_resource(show_spinner=False, on_release=_close_database)
def shared_database(url: str) -> Database:
    """The database, opened (and its schema upgraded) once per process."""
    return open_database(url)


def embedded_worker_enabled() -> bool:
    """False when `VQA_EMBEDDED_WORKER=0`: a separate `python -m vqa_engine worker` runs runs."""
    return os.environ.get(EMBEDDED_WORKER_ENV, "1").strip().lower() not in ("0", "false", "no")


@st.cache_resource(show_spinner=False, on_release=_stop_host)
def engine_host(url: str) -> EngineHost | None:
    """The engine host thread of this process, started on first use (None when disabled)."""
    if not embedded_worker_enabled():
        return None
    from vqa_engine.host import EngineHost

    host = EngineHost(shared_database(url))
    host.start()
    return host


@dataclass
class DemoSimulator:
    """The offline demo endpoint of this process: started and stopped from Settings."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: SimulatorServer | None = None

    @property
    def running(self) -> bool:
        return self.server is not None

    def start(self, config: SimulatorConfig | None = None) -> SimulatorServer:
        from vqa_engine.simulator import SimulatorServer

        with self._lock:
            if self.server is None:
                self.server = SimulatorServer(config).start()
            return self.server

    def stop(self) -> None:
        with self._lock:
            server, self.server = self.server, None
        if server is not None:
            server.stop()


def _stop_simulator(simulator: DemoSimulator) -> None:
    simulator.stop()


@st.cache_resource(show_spinner=False, on_release=_stop_simulator)
def demo_simulator() -> DemoSimulator:
    return DemoSimulator()


@st.cache_data(ttl=5, show_spinner=False, max_entries=16)
def dataset_list(url: str) -> list[DatasetOverview]:
    """Datasets with their counts for the sidebar, at most a few seconds old.

    Every rerun of every page draws the sidebar; the grouped count behind it costs tens of
    milliseconds on 100,000 items, so it is shared by all sessions for a moment. Pages that
    create a dataset call `dataset_list.clear()`.
    """
    with shared_database(url).read() as session:
        return dataset_overview(session)


@st.cache_data(ttl=30, show_spinner=False, max_entries=64)
def flag_choices(url: str, dataset_id: int) -> list[str]:
    """Quality-flag names of a dataset for the review filter (new flags show within 30 s)."""
    with shared_database(url).read() as session:
        return flag_names(session, dataset_id)
