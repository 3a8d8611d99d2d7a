"""The generation worker: turns queued runs in the database into model requests.

Shape of the hot path, and why:
- Per run, a fixed pool of `concurrency` consumer tasks takes items from a bounded queue
  that a feeder refills from the database a batch at a time. Memory and open requests stay
  bounded whatever the dataset size; nothing ever gathers over the whole dataset.
- One `VLMClient` (one aiohttp session, connector sized to the concurrency) per run.
- The event loop never touches the database or the disk: claims and results go through one
  writer thread (`ResultWriter`) that commits whatever has queued up (group commit: small
  batches under light load, larger ones under heavy load, never a round trip per request);
  ledger look-ups and image reads are done per claimed batch in a worker thread (large
  images are read with `asyncio.to_thread` when their call is made), once per item.
- Requests sent but not yet durable in the ledger are bounded by the concurrency
  (`RequestBudget`), so a crash makes us pay again for at most that many.
- Run counters are updated in the same transaction as the results they count.
- The worker polls the Run rows every ~0.5 s: new runs start, paused and cancelled ones
  stop (in-flight requests get a short grace period, then are cancelled and their items go
  back to pending), finished ones end. Claims are refreshed every few seconds; claims of
  dead workers are reclaimed.

API keys live only in memory (`keys`, filled by the engine host); a run whose key came from
the environment or secrets.toml finds it there again after a restart, one whose key was
typed into the run form pauses and asks for it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import queue
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.engine import Database
from db.models import QuestionType, Run, RunStatus
from vqa_engine.client import ClientConfig, VLMClient
from vqa_engine.errors import AuthenticationError, ConfigError, EndpointError, FormatError
from vqa_engine.generator import (
    AttemptFailure,
    ItemGenerator,
    ItemJob,
    ItemOutcome,
    Step,
    safe_message,
)
from vqa_engine.images import stored_path
from vqa_engine.ledger import LedgerRecord, find_successes, record_entries
from vqa_engine.parsing import parse_answer
from vqa_engine.runs import (
    DEFAULT_STALE_AFTER,
    KeyOrigin,
    RunSettings,
    as_utc,
    reclaim_in_session,
    run_endpoint,
    utcnow,
    worker_identity,
    worker_started,
    worker_stopped,
)
from vqa_engine.settings import is_placeholder_key, read_secrets
from vqa_engine import work_queue

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFETCH_BYTES_PER_BATCH = 8 * 1024 * 1024  # image bytes read ahead with one claimed batch
PREFETCH_MAX_IMAGE = 1024 * 1024  # larger images are read only when their call is made


@dataclass(frozen=True)
class WorkerSettings:
    """Timings of the worker's housekeeping; defaults suit a dashboard and a batch job."""

    poll_interval: float = 0.5  # how often run rows are read (pause / cancel latency)
    heartbeat_interval: float = 5.0
    reclaim_interval: float = 15.0
    stale_after: timedelta = DEFAULT_STALE_AFTER
    pause_grace: float = 1.0  # in-flight requests may finish this long after a pause
    missing_key_grace: float = 10.0  # a run-form key nobody holds: pause after this long
    exclusive: bool = False  # this worker owns the database alone (the CLI): reclaim all
    restart_delay: float = 5.0  # after an unexpected executor error


# ---------------------------------------------------------------- the single writer


class _Command:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[Session], Any], future: asyncio.Future[Any] | None,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


@dataclass
class _Outcome:
    run_id: int
    worker_id: str
    outcome: ItemOutcome


@dataclass
class _Usage:
    run_id: int
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


_STOP = object()


class ResultWriter:
    """The worker's only database writer: a thread committing queued work in batches.

    Under load (the previous batch held `busy_batch` ops or more) a batch is what arrives
    within `linger` seconds of its first op (20 ms: a transaction per request would cost
    more than the request), cut short when a request waits for a commit (`hurry`);
    otherwise, and for commands, it is whatever is queued now. Ledger records are committed
    at once (requests wait on them); item outcomes and usage follow in larger batches, at
    most `defer_outcomes` seconds later, so a request rarely waits behind them. Commands
    (claims, status changes) run each in their own transaction, after all data queued
    before them, and resolve an asyncio future with their result.
    """

    def __init__(self, database: Database, *, max_batch: int = 5000,
                 linger: float = 0.02, busy_batch: int = 8,
                 defer_outcomes: float = 0.2) -> None:
        self.database = database
        self.max_batch = max_batch
        self.linger = linger
        self.busy_batch = busy_batch
        self.defer_outcomes = defer_outcomes
        self._busy = False
        self._hurry = threading.Event()
        self._deferred: list[Any] = []
        self._deferred_since = 0.0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.failures = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vqa-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Write everything queued so far, then end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    # -- submitting

    def record(self, record: LedgerRecord,
               on_commit: Callable[[], None] | None = None) -> None:
        """Queue a response for the ledger; `on_commit` is called in the caller's event loop
        once it is durable (or could not be stored)."""
        self._queue.put(record)
        if on_commit is not None:
            self._queue.put(_AfterCommit(on_commit, asyncio.get_running_loop()))

    def hurry(self) -> None:
        """Someone waits for a commit: cut the current linger short."""
        self._hurry.set()

    def outcome(self, run_id: int, worker_id: str, outcome: ItemOutcome) -> None:
        self._queue.put(_Outcome(run_id, worker_id, outcome))

    def usage(self, usage: _Usage) -> None:
        self._queue.put(usage)

    def call(self, fn: Callable[[Session], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Command(fn, future, loop))
        return future

    # -- the thread

    def _collect(self) -> list[Any]:
        """The next batch: whatever arrives within `linger` of the first op, cut short by a
        command or a waiting request (`hurry`). Empty when deferred outcomes are due."""
        try:
            if self._deferred:
                due = self._deferred_since + self.defer_outcomes - time.monotonic()
                first = self._queue.get(timeout=max(due, 0.0))
            else:
                first = self._queue.get()
        except queue.Empty:
            return []
        if (self._busy and self.linger > 0 and not isinstance(first, _Command)
                and first is not _STOP):
            # Wait on an event rather than the queue: a wake-up per queued op would cost the
            # event loop a GIL hand-off each time.
            self._hurry.wait(self.linger)
        self._hurry.clear()
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._busy = len(batch) >= self.busy_batch
        return batch

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = self._collect()
            if any(op is _STOP for op in batch):
                stopping = True
                batch = [op for op in batch if op is not _STOP]
            commands = [op for op in batch if isinstance(op, _Command)]
            self._apply_data([op for op in batch if not isinstance(op, _Command)],
                             flush=bool(commands) or stopping)
            for command in commands:
                self._apply_command(command)

    def _apply_data(self, ops: list[Any], *, flush: bool) -> None:
        """Ledger records now (requests wait for them: `RequestBudget`), in a transaction
        of their own; item outcomes and usage are deferred while requests keep waiting, up
        to `defer_outcomes` seconds, and always written before a command runs."""
        waiting = [op for op in ops if isinstance(op, _AfterCommit)]
        records = [op for op in ops if isinstance(op, LedgerRecord)]
        rest = [op for op in ops if not isinstance(op, (LedgerRecord, _AfterCommit))]
        if rest and not self._deferred:
            self._deferred_since = time.monotonic()
        self._deferred.extend(rest)
        due = (flush or not waiting or len(self._deferred) >= self.max_batch
               or time.monotonic() - self._deferred_since >= self.defer_outcomes)
        if not waiting:
            if due and (records or self._deferred):
                self._store(records + self._deferred)
                self._deferred = []
            elif records:
                self._store(records)
            return
        if records:
            self._store_records(records)
        callbacks: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = defaultdict(list)
        for op in waiting:
            callbacks[op.loop].append(op.callback)
        for loop, calls in callbacks.items():
            try:
                loop.call_soon_threadsafe(_call_all, calls)
            except RuntimeError:
                pass  # that loop has ended
        if due and self._deferred:
            self._store(self._deferred)
            self._deferred = []

    def _store_records(self, records: list[LedgerRecord]) -> None:
        """Just the ledger rows, in the shortest transaction; their counts join the
        deferred outcomes."""
        try:
            with self.database.write() as session:
                record_entries(session, records)
            self.batches += 1
        except Exception:
            self._store(records)  # one by one, with their counts
            return
        counts: dict[int, _Usage] = {}
        for record in records:
            if record.run_id is None:
                continue
            usage = counts.setdefault(record.run_id, _Usage(record.run_id))
            usage.requests += 1
            usage.prompt_tokens += record.prompt_tokens
            usage.completion_tokens += record.completion_tokens
        if counts and not self._deferred:
            self._deferred_since = time.monotonic()
        self._deferred.extend(counts.values())

    def _store(self, ops: list[Any]) -> None:
        try:
            with self.database.write() as session:
                _write_data(session, ops)
            self.batches += 1
            return
        except Exception:
            if len(ops) == 1:
                self.failures += 1
                log.exception("could not store %s", type(ops[0]).__name__)
                return
        for op in ops:  # one bad op must not lose the others
            self._store([op])

    def _apply_command(self, command: _Command) -> None:
        try:
            with self.database.write() as session:
                result = command.fn(session)
        except BaseException as exc:  # handed to the awaiting task
            if command.future is not None and command.loop is not None:
                command.loop.call_soon_threadsafe(_set_exception, command.future, exc)
            else:
                log.exception("database command failed")
            return
        if command.future is not None and command.loop is not None:
            command.loop.call_soon_threadsafe(_set_result, command.future, result)


@dataclass(frozen=True)
class _AfterCommit:
    callback: Callable[[], None]
    loop: asyncio.AbstractEventLoop


def _call_all(calls: list[Callable[[], None]]) -> None:
    for call in calls:
        call()


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _write_data(session: Session, ops: list[Any]) -> None:
    records = [op for op in ops if isinstance(op, LedgerRecord)]
    usage: dict[int, work_queue.RunUsage] = defaultdict(work_queue.RunUsage)
    for run_id, part in work_queue.store_ledger(session, records).items():
        _merge(usage[run_id], part)
    grouped: dict[tuple[int, str], list[ItemOutcome]] = defaultdict(list)
    for op in ops:
        if isinstance(op, _Outcome):
            grouped[(op.run_id, op.worker_id)].append(op.outcome)
        elif isinstance(op, _Usage):
            entry = usage[op.run_id]
            entry.retries += op.retries
            entry.requests += op.requests
            entry.prompt_tokens += op.prompt_tokens
            entry.completion_tokens += op.completion_tokens
            entry.add_errors(op.errors.elements())
    for (run_id, worker_id), outcomes in grouped.items():
        _merge(usage[run_id], work_queue.store_outcomes(session, run_id, worker_id, outcomes))
    for run_id in sorted(usage):
        work_queue.add_usage(session, run_id, usage[run_id])


def _merge(into: work_queue.RunUsage, part: work_queue.RunUsage) -> None:
    into.requests += part.requests
    into.ledger_hits += part.ledger_hits
    into.retries += part.retries
    into.prompt_tokens += part.prompt_tokens
    into.completion_tokens += part.completion_tokens
    into.generated += part.generated
    into.failed += part.failed
    if part.errors:
        into.add_errors(part.errors.elements())


# ---------------------------------------------------------------- one run


class RequestBudget:
    """Requests sent but not yet durable in the ledger, at most `size` of them.

    A response is paid for when it arrives but only safe once its ledger entry is
    committed. Holding a slot from sending until that commit bounds what a crash can make
    us pay again to the run's concurrency. A request that would wait for a slot asks the
    writer to commit at once rather than linger.
    """

    def __init__(self, size: int, writer: ResultWriter) -> None:
        self._free = asyncio.Semaphore(size)
        self._writer = writer

    async def enter(self) -> None:
        if self._free.locked():
            self._writer.hurry()
        await self._free.acquire()

    def leave(self) -> None:
        self._free.release()


class StopMode(str, enum.Enum):
    """Why an executor stops. Graceful modes let in-flight requests finish for a moment."""

    PAUSE = "pause"
    SHUTDOWN = "shutdown"
    CANCEL = "cancel"
    FAIL = "fail"
    ERROR = "error"

    @property
    def graceful(self) -> bool:
        return self in (StopMode.PAUSE, StopMode.SHUTDOWN)


class RunExecutor:
    """Executes one run in this worker until it is finished or told to stop."""

    def __init__(self, worker: Worker, run_id: int, config: dict[str, Any], api_key: str | None
                 ) -> None:
        self.worker = worker
        self.run_id = run_id
        self.settings = RunSettings.from_config(config.get("settings") or {})
        self.endpoint = run_endpoint(config, api_key)
        self.writer = worker.writer
        self.worker_id = worker.worker_id
        self.queue: asyncio.Queue[ItemJob] = asyncio.Queue()
        self.busy: dict[asyncio.Task[None], ItemJob] = {}
        # Claimed items whose outcome has not been handed to the writer yet: added by the
        # writer thread as a claim commits, removed here; released when the executor stops.
        self.unsettled: set[int] = set()
        self.stop_mode: StopMode | None = None
        self.fail_message: str | None = None
        self._stop_requested = asyncio.Event()
        self._room = asyncio.Event()
        self._retries = _Usage(run_id)
        self.generator: ItemGenerator | None = None
        self.finished = False

    # -- control

    def request_stop(self, mode: StopMode) -> None:
        if self.stop_mode is None:
            self.stop_mode = mode
            self._stop_requested.set()

    # -- main

    async def run(self) -> None:
        started = await self.writer.call(
            lambda s: work_queue.mark_running(s, self.run_id, self.worker_id))
        if not started:
            return
        settings = self.settings
        config = ClientConfig(
            endpoint=self.endpoint,
            concurrency=settings.concurrency,
            timeouts=settings.timeouts,
            retry=settings.retry,
            normalize_model=settings.normalize_model,
            temperature=settings.generation.temperature,
            max_tokens=settings.generation.max_tokens,
        )
        log.info("run %s: started (%s, model %s, concurrency %s)", self.run_id,
                 self.endpoint.base_url, self.endpoint.model, settings.concurrency)
        async with VLMClient(config, on_retry=self._on_retry) as client:
            budget = RequestBudget(settings.concurrency, self.writer)
            self.generator = ItemGenerator(
                client, settings.generation, model=client.model,
                record=lambda record: self.writer.record(record, on_commit=budget.leave),
                run_id=self.run_id, gate=budget, checks=settings.model_checks,
            )
            consumers = [asyncio.create_task(self._consume(), name=f"run{self.run_id}-c{i}")
                         for i in range(settings.concurrency)]
            feeder = asyncio.create_task(self._feed(), name=f"run{self.run_id}-feeder")
            stop_wait = asyncio.create_task(self._stop_requested.wait())
            try:
                await asyncio.wait({feeder, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
                if feeder.done() and not feeder.cancelled() and feeder.exception():
                    exc = feeder.exception()
                    assert exc is not None
                    log.error("run %s: feeder failed: %s", self.run_id, safe_message(exc))
                    if self.stop_mode is None:
                        self.stop_mode = StopMode.ERROR
                await self._wind_down(consumers)
        self._flush_usage()
        message = self.fail_message

        def settle(session: Session) -> None:
            # In the writer, after any claim still queued; one transaction, so whoever sees
            # the run failed also sees its items pending.
            work_queue.release_items(session, self.worker_id, sorted(self.unsettled.copy()))
            if message:
                work_queue.set_run_status(session, self.run_id, RunStatus.FAILED, message)

        await self.writer.call(settle)
        log.info("run %s: %s", self.run_id, "finished" if self.finished else
                 f"stopped ({self.stop_mode.value if self.stop_mode else 'unknown'})")

    async def _wind_down(self, consumers: list[asyncio.Task[None]]) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()  # released with every other unsettled claim
        idle = [task for task in consumers if task not in self.busy]
        for task in idle:
            task.cancel()
        busy = [task for task in consumers if task in self.busy]
        grace = self.worker.settings.pause_grace
        if busy and self.stop_mode is not None and self.stop_mode.graceful and grace > 0:
            await asyncio.wait(busy, timeout=grace)
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)

    def _on_retry(self, error: EndpointError) -> None:
        self._retries.retries += 1
        self._retries.errors[error.error_type] += 1

    def _flush_usage(self) -> None:
        if self._retries.retries:
            self.writer.usage(self._retries)
            self._retries = _Usage(self.run_id)

    # -- feeding

    async def _feed(self) -> None:
        settings = self.settings
        depth = max(settings.batch_size, settings.concurrency)
        idle_checks = 0
        while True:
            while self.queue.qsize() >= depth:
                self._room.clear()
                await self._room.wait()
            claimed = await self.writer.call(self._claim)
            if claimed:
                idle_checks = 0
                jobs = await asyncio.to_thread(self._prepare_jobs, claimed)
                for job in jobs:
                    self.queue.put_nowait(job)
                continue
            # Nothing pending: wait for our in-flight items, then see if the run is done.
            while self.busy or not self.queue.empty():
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), timeout=0.2)
                except TimeoutError:
                    pass
            self._flush_usage()
            remainder = await self.writer.call(
                lambda s: work_queue.finish_if_done(s, self.run_id))
            if remainder.completed:
                self.finished = True
                return
            if remainder.pending:
                continue
            # Items still generating elsewhere (another worker, or a dead one).
            idle_checks += 1
            if idle_checks % 10 == 0:
                await self.worker.reclaim(self.run_id)
            await asyncio.sleep(self.worker.settings.poll_interval * 2)

    def _claim(self, session: Session) -> list[work_queue.ClaimedItem]:
        # Runs in the writer thread; recorded there so a claim whose caller was cancelled
        # meanwhile is still released when the executor stops.
        claimed = work_queue.claim_items(session, self.run_id, self.worker_id,
                                         self.settings.batch_size)
        self.unsettled.update(c.item_id for c in claimed)
        return claimed

    def _prepare_jobs(self, claimed: list[work_queue.ClaimedItem]) -> list[ItemJob]:
        """Build jobs and prefetch their successful ledger entries (runs in a thread)."""
        assert self.generator is not None
        generator = self.generator
        data = self.worker.data
        previous_ids = [c.current_generation_id for c in claimed
                        if c.regeneration > 0 and c.current_generation_id is not None]
        with self.worker.database.read() as session:
            previous = work_queue.previous_generations(session, previous_ids)
            jobs: list[ItemJob] = []
            budget = PREFETCH_BYTES_PER_BATCH
            read: dict[str, bytes] = {}
            for c in claimed:
                answer, explanation, distractors = previous.get(
                    c.current_generation_id or -1, (None, None, []))
                path = stored_path(data, c.prepared_path)
                loader = _reader(path)
                if c.prepared_path in read:
                    loader = _preloaded(read[c.prepared_path])
                elif c.prepared_byte_size <= min(budget, PREFETCH_MAX_IMAGE):
                    # Small images are read here, in this thread, with the batch: one
                    # thread hop per batch instead of one per item. The rest on demand.
                    try:
                        read[c.prepared_path] = path.read_bytes()
                    except OSError:
                        pass  # reported by the on-demand read, with the item
                    else:
                        budget -= c.prepared_byte_size
                        loader = _preloaded(read[c.prepared_path])
                jobs.append(ItemJob(
                    item_id=c.item_id, external_id=c.external_id, question=c.question,
                    question_type=c.question_type, image_sha256=c.image_sha256,
                    load_image=loader, regeneration=c.regeneration,
                    regenerate_scope=c.regenerate_scope, regenerate_reason=c.regenerate_reason,
                    previous_answer=answer, previous_explanation=explanation,
                    previous_distractors=distractors, attempts_used=c.attempts,
                ))
            first: dict[str, ItemJob] = {}
            for job in jobs:
                if job.distractors_only:
                    assert job.previous_answer is not None
                    first[generator.distractor_request(job, job.previous_answer)[1]] = job
                else:
                    first[generator.answer_request(job)[1]] = job
            hits = find_successes(session, first)
            second: dict[str, ItemJob] = {}
            for key, hit in hits.items():
                job = first[key]
                job.known[key] = hit.response_text
                if job.question_type is QuestionType.MULTIPLE_CHOICE and not job.distractors_only:
                    try:
                        answer = parse_answer(hit.response_text).answer
                    except FormatError:
                        continue
                    second[generator.distractor_request(job, answer)[1]] = job
            for key, hit in find_successes(session, second).items():
                second[key].known[key] = hit.response_text
            if generator.checks.any:
                checks = {key: job for job in jobs for key in generator.known_check_keys(job)}
                for key, hit in find_successes(session, checks).items():
                    checks[key].known[key] = hit.response_text
        return jobs

    # -- consuming

    async def _consume(self) -> None:
        task = asyncio.current_task()
        assert task is not None and self.generator is not None
        while True:
            job = await self.queue.get()
            self._room.set()
            if self.stop_mode is not None:
                continue
            self.busy[task] = job
            try:
                outcome = await self.generator.generate(job)
            except AuthenticationError as exc:
                self.busy.pop(task, None)
                self._fail_run(str(exc))
                continue
            except asyncio.CancelledError:
                self.busy.pop(task, None)
                raise
            except Exception as exc:  # a bug must fail one item, not the run
                log.error("run %s: item %s: unexpected %s", self.run_id, job.item_id,
                          type(exc).__name__)
                outcome = ItemOutcome(
                    item_id=job.item_id, attempts=1, permanent=True,
                    failures=[AttemptFailure("internal", Step.ANSWER, safe_message(exc))],
                )
            self.busy.pop(task, None)
            self.unsettled.discard(job.item_id)
            self.writer.outcome(self.run_id, self.worker_id, outcome)
            self._room.set()

    def _fail_run(self, message: str) -> None:
        if self.stop_mode is not None:
            return
        self.fail_message = message
        self.request_stop(StopMode.FAIL)
        log.warning("run %s stopped: %s", self.run_id, message)


def _reader(path: Path) -> Callable[[], Awaitable[bytes]]:
    def load() -> Awaitable[bytes]:
        return asyncio.to_thread(path.read_bytes)

    return load


def _preloaded(data: bytes) -> Callable[[], Awaitable[bytes]]:
    async def load() -> bytes:
        return data

    return load


# ---------------------------------------------------------------- the worker


class Worker:
    """Runs every active run (or only `run_ids`) of a database until `stop` is set."""

    def __init__(
        self,
        database: Database,
        *,
        data: Path,
        settings: WorkerSettings = WorkerSettings(),
        keys: Mapping[int, str] | None = None,
        run_ids: Collection[int] | None = None,
    ) -> None:
        self.database = database
        self.data = Path(data)
        self.settings = settings
        self.keys: Mapping[int, str] = keys if keys is not None else {}
        self.run_ids = set(run_ids) if run_ids is not None else None
        self.worker_id = worker_identity(secrets.token_hex(4))
        self.writer = ResultWriter(database)
        self.executors: dict[int, tuple[RunExecutor, asyncio.Task[None]]] = {}
        self._restart_after: dict[int, float] = {}
        self._last_heartbeat = 0.0
        self._last_reclaim = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        self.writer.start()
        worker_started(self.worker_id)
        try:
            await self.reclaim(None, everything=self.settings.exclusive)
            while not stop.is_set():
                try:
                    await self._tick()
                except Exception as exc:
                    log.error("worker: %s", safe_message(exc))
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.poll_interval)
                except TimeoutError:
                    pass
        finally:
            for executor, _task in self.executors.values():
                executor.request_stop(StopMode.SHUTDOWN)
            tasks = [task for _executor, task in self.executors.values()]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self.executors.clear()
            await asyncio.to_thread(self.writer.stop)
            worker_stopped(self.worker_id)

    async def reclaim(self, run_id: int | None, *, everything: bool = False) -> int:
        live = [self.worker_id]
        stale = timedelta(0) if everything else self.settings.stale_after
        ids = None if run_id is None else [run_id]
        if run_id is None and self.run_ids is not None:
            ids = sorted(self.run_ids)
        return await self.writer.call(
            lambda s: reclaim_in_session(s, run_ids=ids, stale_after=stale, live_workers=live))

    def _read_runs(self) -> list[tuple[int, RunStatus, dict[str, Any], Any, Any]]:
        executing = list(self.executors)
        with self.database.read() as session:
            query = select(Run.id, Run.status, Run.config, Run.updated_at, Run.heartbeat_at)
            condition = Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING])
            if executing:
                condition = or_(condition, Run.id.in_(executing))
            query = query.where(condition)
            if self.run_ids is not None:
                query = query.where(Run.id.in_(sorted(self.run_ids) or [-1]))
            return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]

    async def _tick(self) -> None:
        for run_id in [rid for rid, (_e, task) in self.executors.items() if task.done()]:
            _executor, task = self.executors.pop(run_id)
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                assert exc is not None
                log.error("run %s: executor failed: %s", run_id, safe_message(exc))
                self._restart_after[run_id] = time.monotonic() + self.settings.restart_delay
        runs = await asyncio.to_thread(self._read_runs)
        now = time.monotonic()
        for run_id, status, config, updated_at, heartbeat_at in runs:
            entry = self.executors.get(run_id)
            if entry is not None:
                if not status.is_active:
                    entry[0].request_stop(
                        StopMode.PAUSE if status is RunStatus.PAUSED else
                        StopMode.CANCEL if status is RunStatus.CANCELLED else StopMode.FAIL)
                continue
            if not status.is_active or now < self._restart_after.get(run_id, 0.0):
                continue
            found = self._find_key(run_id, config)
            if isinstance(found, _MissingKey):
                await self._handle_missing_key(run_id, found, updated_at, heartbeat_at)
                continue
            executor = RunExecutor(self, run_id, config, found)
            task = asyncio.create_task(executor.run(), name=f"run{run_id}")
            self.executors[run_id] = (executor, task)
        if now - self._last_heartbeat >= self.settings.heartbeat_interval:
            self._last_heartbeat = now
            ids = list(self.executors)
            await self.writer.call(lambda s: work_queue.heartbeat(s, self.worker_id, ids))
        if now - self._last_reclaim >= self.settings.reclaim_interval and self.executors:
            self._last_reclaim = now
            for run_id in list(self.executors):
                await self.reclaim(run_id)

    def _find_key(self, run_id: int, config: dict[str, Any]) -> str | None | _MissingKey:
        """The run's key: read again from its origin (so a key fixed in the environment or
        secrets.toml is picked up on resume), or the one handed to the host (run form)."""
        given = self.keys.get(run_id)
        if given and is_placeholder_key(given):
            given = None
        origin = KeyOrigin.from_config(config)
        if origin.kind == "none":
            return None
        if origin.kind == "env" and origin.name:
            value = os.environ.get(origin.name)
            if value and not is_placeholder_key(value):
                return value
            return given or _MissingKey(
                f"the API key came from environment variable {origin.name}, which is not set "
                "in the process running the engine; set it there and resume the run")
        if origin.kind == "secret" and origin.name:
            try:
                value = read_secrets().get(origin.name)
            except ConfigError as exc:
                return given or _MissingKey(str(exc))
            if value is not None and not is_placeholder_key(str(value)):
                return str(value)
            return given or _MissingKey(
                f"the API key came from the secrets.toml entry {origin.name}, which is missing "
                "now; add it to .streamlit/secrets.toml and resume the run")
        return given or _MissingKey(
            "the API key was entered in the run form and is kept only in memory, so it was "
            "lost when the engine restarted; enter it again and resume the run")

    async def _handle_missing_key(self, run_id: int, missing: _MissingKey, updated_at: Any,
                                  heartbeat_at: Any) -> None:
        # Another process (the dashboard, a server worker) may hold the key: only pause
        # once nobody has touched the run (started, resumed, worked on it) for a while.
        moments = [m for m in (as_utc(heartbeat_at), as_utc(updated_at)) if m is not None]
        if moments and (utcnow() - max(moments)).total_seconds() < \
                self.settings.missing_key_grace:
            return
        log.warning("run %s paused: %s", run_id, missing.message)
        await self.writer.call(
            lambda s: work_queue.set_run_status(s, run_id, RunStatus.PAUSED, missing.message))


@dataclass(frozen=True)
class _MissingKey:
    message: str
