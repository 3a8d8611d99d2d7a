"""The engine host: the worker's event loop, in a thread of its own or in the foreground.

The dashboard creates one `EngineHost` per server process (cached as a resource) and starts
it: a daemon thread runs an asyncio loop with the worker, independent of any page or
session, never touching Streamlit. Pages only write requests to the database (start,
pause, cancel, regenerate) and read state back; the host notices within half a second.
`python -m vqa_engine worker` and `python -m vqa_engine generate` run the same worker
(`run_foreground`, or a host thread polled by a progress bar).

API keys typed into a form are handed to the host (`provide_key`) and kept only in its
memory; `launch_run` and `regenerate` do that for the caller.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Collection, Sequence
from pathlib import Path

from db.engine import Database, data_dir
from db.models import RegenerateScope
from vqa_engine.runs import ItemSelection, RunSettings, request_regeneration, start_run
from vqa_engine.settings import Endpoint
from vqa_engine.worker import Worker, WorkerSettings

log = logging.getLogger(__name__)


class EngineHost:
    """One worker loop for one database. `start()` / `stop()` are idempotent and thread-safe."""

    def __init__(
        self,
        database: Database,
        *,
        data: Path | None = None,
        settings: WorkerSettings = WorkerSettings(),
        run_ids: Collection[int] | None = None,
    ) -> None:
        self.database = database
        self.data = Path(data) if data is not None else data_dir()
        self.settings = settings
        self.run_ids = run_ids
        self._keys: dict[int, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.worker: Worker | None = None
        self.error: BaseException | None = None

    # -- keys

    def provide_key(self, run_id: int, key: str | None) -> None:
        """Keep a run's API key in memory (never in the database) for the worker."""
        if key:
            self._keys[run_id] = key

    def forget_key(self, run_id: int) -> None:
        self._keys.pop(run_id, None)

    def has_key(self, run_id: int) -> bool:
        return run_id in self._keys

    # -- convenience for callers holding a key

    def launch_run(
        self,
        dataset_id: int,
        endpoint: Endpoint,
        settings: RunSettings = RunSettings(),
        selection: ItemSelection = ItemSelection.PENDING,
        item_ids: Sequence[int] | None = None,
    ) -> int:
        """`runs.start_run`, then hand the key to this host."""
        run_id = start_run(self.database, dataset_id, endpoint, settings, selection, item_ids)
        self.provide_key(run_id, endpoint.api_key)
        return run_id

    def regenerate(
        self,
        item_ids: Sequence[int],
        *,
        scope: RegenerateScope,
        reason: str | None,
        endpoint: Endpoint,
        settings: RunSettings = RunSettings(),
    ) -> int:
        """`runs.request_regeneration`, then hand the key to this host."""
        run_id = request_regeneration(self.database, item_ids, scope=scope, reason=reason,
                                      endpoint=endpoint, settings=settings)
        self.provide_key(run_id, endpoint.api_key)
        return run_id

    # -- the loop

    def _make_worker(self) -> Worker:
        return Worker(self.database, data=self.data, settings=self.settings, keys=self._keys,
                      run_ids=self.run_ids)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.worker = self._make_worker()
        self._ready.set()
        await self.worker.run(self._stop)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported through is_alive / error
            self.error = exc
            log.error("engine host stopped unexpectedly: %s", type(exc).__name__)
        finally:
            self._ready.set()

    def start(self) -> None:
        """Start the worker thread (once; later calls do nothing while it runs)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._ready.clear()
            self._thread = threading.Thread(target=self._thread_main, name="vqa-engine",
                                            daemon=True)
            self._thread.start()
        self._ready.wait(10)

    def stop(self, timeout: float = 15.0) -> bool:
        """Drain (in-flight requests get a short grace, the rest go back to pending, every
        result is written) and join. True when the thread has ended."""
        with self._lock:
            thread = self._thread
            loop, stop = self._loop, self._stop
            if thread is None:
                return True
            if loop is not None and stop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(stop.set)
                except RuntimeError:
                    pass  # the loop ended on its own
            thread.join(timeout)
            ended = not thread.is_alive()
            if ended:
                self._thread = None
            return ended

    @property
    def is_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def run_foreground(self) -> None:
        """Run the worker in this thread until SIGINT / SIGTERM, then drain and return."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                except (NotImplementedError, RuntimeError):
                    pass
            self._loop, self._stop = loop, stop
            self.worker = self._make_worker()
            await self.worker.run(stop)

        asyncio.run(main())
