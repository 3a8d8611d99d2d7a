"""The part of an ingest that runs in the process pool: one image, from upload to staged files.

Kept apart from `vqa_engine.ingest` so a pool process imports only Pillow and the image
modules (no SQLAlchemy), which makes the pool quick to start. A worker reads the upload
from disk, hashes it, prepares the model-ready JPEG and writes both files into the staging
folder; it returns metadata only, so no image crosses a process boundary and the parent's
memory stays flat however large the upload.

Pools never fork: the dashboard's server process runs threads (the engine's event loop),
and a forked child can inherit a lock one of them holds. The fork server is used instead,
with this module preloaded so each worker starts with it already imported.

A spawned or fork-server child re-imports its parent's `__main__` by file path, and
Streamlit runs every page as `__main__`: left alone, each worker would run the Upload page
(and the app's start-up) again. The pool's processes are therefore started while
`__main__` is a bare module, and only then given work.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path

from vqa_engine.errors import InputError
from vqa_engine.image_sources import ImageSource, SourceLimits, close_archives, read_source
from vqa_engine.images import ImageLimits, image_paths_for, prepare_image


@dataclass(frozen=True)
class PrepareTask:
    index: int
    source: ImageSource


@dataclass(frozen=True)
class WorkerSettings:
    staging: Path
    sources: SourceLimits
    images: ImageLimits


@dataclass(frozen=True)
class PreparedResult:
    index: int
    sha256: str
    byte_size: int
    staged: bool  # False: these bytes are already stored, nothing was prepared
    format: str = ""
    ext: str = ""
    width: int = 0
    height: int = 0
    prepared_width: int = 0
    prepared_height: int = 0
    prepared_byte_size: int = 0
    quality: int = 0


@dataclass(frozen=True)
class FailedResult:
    index: int
    reason: str
    byte_size: int = 0


TaskResult = PreparedResult | FailedResult

_worker_known: frozenset[str] = frozenset()


def staged_paths(staging: Path, sha256: str, ext: str) -> tuple[Path, Path]:
    """Where a worker leaves an image's original and prepared files inside the staging dir."""
    original_rel, prepared_rel = image_paths_for(sha256, ext)
    return staging / original_rel, staging / prepared_rel


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def prepare_task(task: PrepareTask, settings: WorkerSettings, known: frozenset[str]) -> TaskResult:
    """Read, hash, prepare and stage one image; `known` hashes are not prepared again."""
    try:
        data = read_source(task.source, settings.sources)
    except InputError as exc:
        return FailedResult(task.index, str(exc))
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 in known:
        return PreparedResult(task.index, sha256, len(data), staged=False)
    try:
        prepared = prepare_image(data, settings.images)
    except InputError as exc:
        return FailedResult(task.index, str(exc), len(data))
    original, jpeg = staged_paths(settings.staging, sha256, prepared.extension)
    original.parent.mkdir(parents=True, exist_ok=True)
    jpeg.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(original, data)
    _write_atomically(jpeg, prepared.jpeg)
    return PreparedResult(
        task.index, sha256, len(data), staged=True,
        format=prepared.source_format, ext=prepared.extension,
        width=prepared.source_width, height=prepared.source_height,
        prepared_width=prepared.width, prepared_height=prepared.height,
        prepared_byte_size=len(prepared.jpeg), quality=prepared.quality,
    )


def _init_worker(known: frozenset[str]) -> None:
    global _worker_known
    _worker_known = known


def _pool_task(task: PrepareTask, settings: WorkerSettings) -> TaskResult:
    return prepare_task(task, settings, _worker_known)


_MAIN_SWAP = threading.Lock()


@contextmanager
def bare_main() -> Iterator[None]:
    """While processes start, `__main__` is a module with no file for children to re-run."""
    with _MAIN_SWAP:
        main = sys.modules.get("__main__")
        has_script = main is not None and getattr(main, "__spec__", None) is None \
            and getattr(main, "__file__", None)
        if not has_script:
            yield
            return
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


def pool_context() -> BaseContext:
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def run_tasks(
    tasks: Sequence[PrepareTask], settings: WorkerSettings, known: frozenset[str], workers: int,
    in_flight: int, should_stop: Callable[[], bool],
) -> Iterator[TaskResult]:
    """Results in completion order, from a pool of `workers` processes (1: in this process).

    At most `workers * in_flight` tasks are queued at a time, and none is submitted once
    `should_stop()` is true, so a failed upload stops early.
    """
    if workers <= 1:
        try:
            for task in tasks:
                if should_stop():
                    return
                yield prepare_task(task, settings, known)
        finally:
            close_archives()
        return
    pending: set[Future[TaskResult]] = set()
    queue = iter(tasks)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=pool_context(),
        initializer=_init_worker, initargs=(known,),
    ) as pool:
        with bare_main():
            # The executor would start processes one per submit, later, outside the swap.
            pool._launch_processes()
        try:
            while True:
                while len(pending) < workers * in_flight and not should_stop():
                    task = next(queue, None)
                    if task is None:
                        break
                    pending.add(pool.submit(_pool_task, task, settings))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()
