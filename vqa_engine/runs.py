"""Generation runs as database rows: what the dashboard and the CLI ask for and read back.

The database is the source of truth. Starting, pausing, resuming, cancelling and
regenerating are writes to the Run and Item rows; the engine host (`vqa_engine.host`)
notices them within half a second and acts. Progress is one Run row plus two small indexed
queries, cheap enough to poll every second, so a reload or a second tab rebuilds everything.

A run's configuration is snapshotted without secrets: the endpoint's URL, model and the
*origin* of its key (an environment variable, a secrets.toml entry or the run form), never
the key. After a restart the worker reads a key from the environment or secrets.toml again;
a key typed into the run form lived only in memory and the run pauses asking for it.

Item status flow: pending -> generating -> generated | failed; any -> pending again on a
regeneration or a new run. Items left `generating` by a worker that died are reclaimed.
"""

from __future__ import annotations

import enum
import os
import re
import socket
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any, overload

from sqlalchemy import ColumnElement, false, func, or_, select, true, update
from sqlalchemy.orm import Session

from db.engine import Database
from db.models import (
    Dataset,
    Generation,
    Item,
    ItemStatus,
    LedgerEntry,
    RegenerateScope,
    Run,
    RunStatus,
)
from vqa_engine.client import RetryPolicy, Timeouts
from vqa_engine.errors import ValidationError
from vqa_engine.generator import GenerationSettings
from vqa_engine.model_checks import ModelChecks
from vqa_engine.prompts import DEFAULT_PROMPTS, PromptSet
from vqa_engine.settings import Endpoint

DEFAULT_STALE_AFTER = timedelta(seconds=60)
RATE_WINDOW_S = 20.0
LATENCY_SAMPLE = 200
LATENCY_SCAN = 5000  # newest ledger rows scanned for a run's latency sample


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@overload
def as_utc(moment: datetime) -> datetime: ...


@overload
def as_utc(moment: None) -> None: ...


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored moment is UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class ItemSelection(str, enum.Enum):
    """Which items of a dataset a new run generates."""

    ALL = "all"  # every item not being generated right now
    PENDING = "pending"
    FAILED = "failed"
    INCOMPLETE = "incomplete"  # pending or failed: what a re-run of the CLI picks up
    IDS = "ids"


@dataclass(frozen=True)
class RunSettings:
    """How a run executes. Stored with the run, so a resumed run behaves the same."""

    concurrency: int = 8
    batch_size: int = 32
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    normalize_model: bool = True
    model_checks: ModelChecks = field(default_factory=ModelChecks)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def to_config(self) -> dict[str, Any]:
        generation = {
            f.name: getattr(self.generation, f.name)
            for f in fields(self.generation)
            if f.name != "prompts"
        }
        generation["prompts"] = asdict(self.generation.prompts)
        config: dict[str, Any] = {
            "concurrency": self.concurrency,
            "batch_size": self.batch_size,
            "generation": generation,
            "timeouts": asdict(self.timeouts),
            "retry": asdict(self.retry),
            "normalize_model": self.normalize_model,
        }
        if self.model_checks.any:
            # Only when asked for: a run stored before the checks existed keeps comparing
            # equal to the same settings, so it is resumed rather than replaced.
            config["model_checks"] = asdict(self.model_checks)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RunSettings:
        defaults = cls()
        generation = dict(config.get("generation") or {})
        prompts_data = generation.pop("prompts", None)
        prompts = _build(PromptSet, prompts_data, DEFAULT_PROMPTS) if prompts_data else DEFAULT_PROMPTS
        return cls(
            concurrency=int(config.get("concurrency", defaults.concurrency)),
            batch_size=int(config.get("batch_size", defaults.batch_size)),
            generation=_build(GenerationSettings, generation, defaults.generation,
                              prompts=prompts),
            timeouts=_build(Timeouts, config.get("timeouts"), defaults.timeouts),
            retry=_build(RetryPolicy, config.get("retry"), defaults.retry),
            normalize_model=bool(config.get("normalize_model", defaults.normalize_model)),
            model_checks=_build(ModelChecks, config.get("model_checks"), defaults.model_checks),
        )


def _build(cls: Any, data: dict[str, Any] | None, default: Any, **extra: Any) -> Any:
    known = {f.name for f in fields(cls)}
    values = {name: value for name, value in (data or {}).items() if name in known}
    values.update(extra)
    return cls(**{**{f.name: getattr(default, f.name) for f in fields(cls)}, **values})


# ---------------------------------------------------------------- key origin


@dataclass(frozen=True)
class KeyOrigin:
    """Where a run's key comes from; stored instead of the key."""

    kind: str  # none | env | secret | form
    name: str | None = None

    @classmethod
    def of(cls, endpoint: Endpoint) -> KeyOrigin:
        if not endpoint.has_key:
            return cls("none")
        source = endpoint.key_source
        if match := re.fullmatch(r"environment variable (\S+)", source):
            return cls("env", match.group(1))
        if match := re.fullmatch(r"secrets\.toml entry (\S+)", source):
            return cls("secret", match.group(1))
        return cls("form")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KeyOrigin:
        data = config.get("key_origin") or {}
        return cls(str(data.get("kind", "none")), data.get("name"))

    @property
    def source(self) -> str:
        """Human wording, as in `Endpoint.key_source`."""
        if self.kind == "env":
            return f"environment variable {self.name}"
        if self.kind == "secret":
            return f"secrets.toml entry {self.name}"
        if self.kind == "form":
            return "the run form"
        return "none"


def run_config(endpoint: Endpoint, settings: RunSettings, selection: ItemSelection) -> dict[str, Any]:
    """The snapshot stored on a Run: no secret in it."""
    return {
        "endpoint": endpoint.snapshot(),
        "key_origin": asdict(KeyOrigin.of(endpoint)),
        "settings": settings.to_config(),
        "selection": selection.value,
    }


def run_endpoint(config: dict[str, Any], api_key: str | None) -> Endpoint:
    """The endpoint of a stored run, with a key found again by the caller."""
    snapshot = config.get("endpoint") or {}
    origin = KeyOrigin.from_config(config)
    return Endpoint(
        base_url=snapshot.get("base_url", Endpoint.base_url),
        model=snapshot.get("model", Endpoint.model),
        api_key=api_key,
        key_source=origin.source,
    )


def _same_execution(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("endpoint", "key_origin", "settings")
    return all(a.get(k) == b.get(k) for k in keys)


# ---------------------------------------------------------------- starting runs


def _select_items(
    session: Session, dataset_id: int, selection: ItemSelection, item_ids: Sequence[int] | None
) -> list[int]:
    query = select(Item.id).where(Item.dataset_id == dataset_id)
    if selection is ItemSelection.IDS:
        if not item_ids:
            raise ValidationError("selection 'ids' needs item_ids; pass the items to generate")
        chosen: list[int] = []
        wanted = list(dict.fromkeys(item_ids))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            chosen.extend(session.scalars(query.where(Item.id.in_(chunk))))
        missing = set(wanted) - set(chosen)
        if missing:
            raise ValidationError(
                f"items {sorted(missing)[:10]} are not in dataset {dataset_id}; "
                "pick items from this dataset"
            )
        return chosen
    statuses = {
        ItemSelection.ALL: [s for s in ItemStatus if s is not ItemStatus.GENERATING],
        ItemSelection.PENDING: [ItemStatus.PENDING],
        ItemSelection.FAILED: [ItemStatus.FAILED],
        ItemSelection.INCOMPLETE: [ItemStatus.PENDING, ItemStatus.FAILED],
    }[selection]
    return list(session.scalars(query.where(Item.status.in_(statuses)).order_by(Item.id)))


def _assign(session: Session, item_ids: Sequence[int], run_id: int, **changes: Any) -> None:
    values: dict[str, Any] = dict(
        status=ItemStatus.PENDING,
        run_id=run_id,
        attempts=0,
        last_error=None,
        claimed_by=None,
        claimed_at=None,
        version=Item.version + 1,
        updated_at=utcnow(),
    )
    values.update(changes)
    for start in range(0, len(item_ids), 500):
        chunk = list(item_ids[start : start + 500])
        session.execute(
            update(Item).where(Item.id.in_(chunk)).values(**values),
            execution_options={"synchronize_session": False},
        )


def start_run(
    database: Database,
    dataset_id: int,
    endpoint: Endpoint,
    settings: RunSettings = RunSettings(),
    selection: ItemSelection = ItemSelection.PENDING,
    item_ids: Sequence[int] | None = None,
) -> int:
    """Create a queued run for the selected items and mark them pending; returns its id.

    The key is not stored: hand it to the engine host (`EngineHost.provide_key`) when it
    came from the run form; keys from the environment or secrets.toml are found again.
    """
    with database.write() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise ValidationError(f"dataset {dataset_id} does not exist; import it first")
        chosen = _select_items(session, dataset_id, selection, item_ids)
        if not chosen:
            raise ValidationError(
                f"no items of dataset '{dataset.name}' match selection '{selection.value}'; "
                "choose 'failed' or 'all' to generate them again"
            )
        run = Run(
            dataset_id=dataset_id,
            status=RunStatus.QUEUED,
            config=run_config(endpoint, settings, selection),
            total_items=len(chosen),
            errors_by_type={},
        )
        session.add(run)
        session.flush()
        _assign(session, chosen, run.id)
        return run.id


def request_regeneration(
    database: Database,
    item_ids: Sequence[int],
    *,
    scope: RegenerateScope,
    reason: str | None,
    endpoint: Endpoint,
    settings: RunSettings = RunSettings(),
) -> int:
    """Queue items for regeneration; returns the run that will do it.

    Each item's regeneration number goes up (so its requests get new ledger keys and the
    rejected answer is never handed back), the scope and the curator's reason are stored for
    the prompt, and the item becomes pending. A queued or running run of the same dataset with
    the same endpoint and settings takes the items; otherwise a new run is started. As with
    `start_run`, a key typed into a form must be handed to `EngineHost.provide_key`.
    """
    wanted = list(dict.fromkeys(item_ids))
    if not wanted:
        raise ValidationError("no items to regenerate; select at least one item")
    reason = (reason or "").strip() or None
    with database.write() as session:
        rows = session.execute(
            select(Item.id, Item.dataset_id, Item.run_id, Item.status).where(Item.id.in_(wanted))
        ).all()
        found = {row.id for row in rows}
        if missing := [i for i in wanted if i not in found]:
            raise ValidationError(f"items {missing[:10]} do not exist; reload the page")
        datasets = {row.dataset_id for row in rows}
        if len(datasets) != 1:
            raise ValidationError(
                f"items from {len(datasets)} datasets were selected; regenerate one dataset at a time"
            )
        dataset_id = datasets.pop()
        config = run_config(endpoint, settings, ItemSelection.IDS)
        run = session.scalars(
            select(Run)
            .where(Run.dataset_id == dataset_id, Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]))
            .order_by(Run.id.desc())
            .with_for_update()
        ).first()
        if run is None or not _same_execution(run.config, config):
            run = Run(dataset_id=dataset_id, status=RunStatus.QUEUED, config=config,
                      total_items=0, errors_by_type={})
            session.add(run)
            session.flush()
        already = {
            row.id for row in rows
            if row.run_id == run.id and row.status in (ItemStatus.PENDING, ItemStatus.GENERATING)
        }
        run.total_items += len(wanted) - len(already)
        _assign(
            session,
            wanted,
            run.id,
            regeneration=Item.regeneration + 1,
            regenerate_scope=scope,
            regenerate_reason=reason,
        )
        return run.id


# ---------------------------------------------------------------- pause / resume / cancel


def _get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id, with_for_update=True)
    if run is None:
        raise ValidationError(f"run {run_id} does not exist; reload the runs page")
    return run


def pause_run(database: Database, run_id: int, message: str | None = None) -> bool:
    """Ask the engine to pause (within a second or two). False if the run was not active."""
    with database.write() as session:
        run = _get_run(session, run_id)
        if not run.status.is_active:
            return False
        run.status = RunStatus.PAUSED
        run.message = message or "paused"
        return True


def resume_run(database: Database, run_id: int) -> bool:
    """Queue a paused (or failed) run again; items of dead workers are reclaimed first."""
    reclaim_stale_items(database, run_id=run_id)
    with database.write() as session:
        run = _get_run(session, run_id)
        if run.status not in (RunStatus.PAUSED, RunStatus.FAILED):
            return False
        run.status = RunStatus.QUEUED
        run.message = None
        run.finished_at = None
        return True


def cancel_run(database: Database, run_id: int) -> bool:
    """Stop a run for good. Its unfinished items go back to pending (results in flight are
    discarded; their responses stay in the ledger, so nothing paid for is lost)."""
    with database.write() as session:
        run = _get_run(session, run_id)
        if run.status.is_finished:
            return False
        run.status = RunStatus.CANCELLED
        run.message = "cancelled"
        run.finished_at = utcnow()
        session.execute(
            update(Item)
            .where(Item.run_id == run_id, Item.status == ItemStatus.GENERATING)
            .values(status=ItemStatus.PENDING, claimed_by=None, claimed_at=None,
                    version=Item.version + 1, updated_at=utcnow()),
            execution_options={"synchronize_session": False},
        )
        return True


def find_open_run(database: Database, dataset_id: int) -> Run | None:
    """The newest queued, running or paused run of a dataset."""
    with database.read() as session:
        return session.scalars(
            select(Run)
            .where(Run.dataset_id == dataset_id,
                   Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PAUSED]))
            .order_by(Run.id.desc())
        ).first()


# ---------------------------------------------------------------- reclaiming


_LIVE_IN_THIS_PROCESS: set[str] = set()


def worker_identity(token: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{token}"


def worker_started(worker_id: str) -> None:
    """Register a worker running in this process (its claims are not reclaimed)."""
    _LIVE_IN_THIS_PROCESS.add(worker_id)


def worker_stopped(worker_id: str) -> None:
    _LIVE_IN_THIS_PROCESS.discard(worker_id)


def worker_process_gone(worker_id: str, live_workers: Iterable[str] = ()) -> bool:
    """True when `worker_id` names a worker on this machine that no longer runs: its process
    has exited, or it was in this process and has stopped."""
    host, _, rest = worker_id.partition(":")
    pid_text, _, _token = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return worker_id not in set(live_workers) and worker_id not in _LIVE_IN_THIS_PROCESS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def reclaim_stale_items(
    database: Database,
    *,
    run_id: int | None = None,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    live_workers: Iterable[str] = (),
) -> int:
    """Put items left `generating` by a dead worker back to pending; returns how many.

    A claim is dead when its worker is a process on this machine that no longer exists, or
    when it has not been refreshed (workers refresh `claimed_at` every few seconds) for
    `stale_after`. `stale_after=timedelta(0)` reclaims every claim not held by
    `live_workers`: only for a process that knows it owns the database alone.
    """
    with database.write() as session:
        return reclaim_in_session(
            session,
            run_ids=None if run_id is None else [run_id],
            stale_after=stale_after,
            live_workers=live_workers,
        )


def reclaim_in_session(
    session: Session,
    *,
    run_ids: Sequence[int] | None,
    stale_after: timedelta,
    live_workers: Iterable[str] = (),
    is_gone: Callable[[str, Iterable[str]], bool] = worker_process_gone,
) -> int:
    """`reclaim_stale_items` inside a write transaction the caller owns."""
    cutoff = utcnow() - stale_after
    live = list(live_workers)
    scope = [Item.status == ItemStatus.GENERATING]
    if run_ids is not None:
        scope.append(Item.run_id.in_(list(run_ids) or [-1]))
    if stale_after <= timedelta(0):
        condition: ColumnElement[bool] = (
            or_(Item.claimed_by.is_(None), Item.claimed_by.not_in(live)) if live else true()
        )
    else:
        claimants = [
            c for c in session.scalars(select(Item.claimed_by).where(*scope).distinct())
            if c is not None
        ]
        gone = [c for c in claimants if c not in live and is_gone(c, live)]
        condition = or_(
            Item.claimed_at.is_(None),
            Item.claimed_at < cutoff,
            Item.claimed_by.is_(None),
            Item.claimed_by.in_(gone) if gone else false(),
        )
    result = session.execute(
        update(Item)
        .where(*scope, condition)
        .values(status=ItemStatus.PENDING, claimed_by=None, claimed_at=None,
                version=Item.version + 1, updated_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount or 0)


# ---------------------------------------------------------------- progress


@dataclass(frozen=True)
class RunProgress:
    run_id: int
    dataset_id: int
    status: RunStatus
    message: str | None
    total: int
    generated: int
    failed: int
    pending: int
    in_progress: int
    requests: int
    ledger_hits: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    errors_by_type: dict[str, int]
    items_per_second: float
    eta_seconds: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    model: str
    base_url: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def done(self) -> int:
        return self.generated + self.failed

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[q - 1])


def run_progress(database: Database, run_id: int) -> RunProgress:
    """Counters, rate, ETA, errors and latency of a run: one row and two bounded queries."""
    now = utcnow()
    with database.read() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ValidationError(f"run {run_id} does not exist; reload the runs page")
        counts = dict(
            session.execute(
                select(Item.status, func.count())
                .where(Item.run_id == run_id,
                       Item.status.in_([ItemStatus.PENDING, ItemStatus.GENERATING]))
                .group_by(Item.status)
            ).all()
        )
        started = as_utc(run.started_at)
        window_start = now - timedelta(seconds=RATE_WINDOW_S)
        recent = 0
        if run.status is RunStatus.RUNNING:
            recent = session.scalar(
                select(func.count())
                .select_from(Generation)
                .where(Generation.run_id == run_id, Generation.created_at >= window_start)
            ) or 0
        newest = session.scalar(select(func.max(LedgerEntry.id))) or 0
        latencies = [
            float(value)
            for value in session.scalars(
                select(LedgerEntry.latency_ms)
                .where(LedgerEntry.id > newest - LATENCY_SCAN, LedgerEntry.run_id == run_id,
                       LedgerEntry.ok.is_(True), LedgerEntry.latency_ms.is_not(None))
                .order_by(LedgerEntry.id.desc())
                .limit(LATENCY_SAMPLE)
            )
        ]
    done = run.generated_items + run.failed_items
    if run.status is RunStatus.RUNNING and started is not None:
        window = min(RATE_WINDOW_S, max((now - started).total_seconds(), 1e-3))
        rate = recent / window
    else:
        end = as_utc(run.finished_at) or now
        elapsed = (end - started).total_seconds() if started else 0.0
        rate = done / elapsed if elapsed > 0 else 0.0
    remaining = max(0, run.total_items - done)
    eta = remaining / rate if rate > 0 and run.status.is_active else None
    snapshot = (run.config or {}).get("endpoint") or {}
    return RunProgress(
        run_id=run.id,
        dataset_id=run.dataset_id,
        status=run.status,
        message=run.message,
        total=run.total_items,
        generated=run.generated_items,
        failed=run.failed_items,
        pending=int(counts.get(ItemStatus.PENDING, 0)),
        in_progress=int(counts.get(ItemStatus.GENERATING, 0)),
        requests=run.requests,
        ledger_hits=run.ledger_hits,
        retries=run.retries,
        prompt_tokens=int(run.prompt_tokens or 0),
        completion_tokens=int(run.completion_tokens or 0),
        errors_by_type={str(k): int(v) for k, v in (run.errors_by_type or {}).items()},
        items_per_second=rate,
        eta_seconds=eta,
        latency_p50_ms=_percentile(latencies, 50),
        latency_p95_ms=_percentile(latencies, 95),
        model=str(snapshot.get("model", "")),
        base_url=str(snapshot.get("base_url", "")),
        created_at=as_utc(run.created_at),
        started_at=started,
        finished_at=as_utc(run.finished_at),
    )


def list_runs(database: Database, dataset_id: int | None = None, limit: int = 50) -> list[Run]:
    """Newest runs first, for overview pages."""
    with database.read() as session:
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if dataset_id is not None:
            query = query.where(Run.dataset_id == dataset_id)
        return list(session.scalars(query))


__all__ = [
    "DEFAULT_STALE_AFTER",
    "ItemSelection",
    "KeyOrigin",
    "RunProgress",
    "RunSettings",
    "cancel_run",
    "find_open_run",
    "list_runs",
    "pause_run",
    "reclaim_in_session",
    "reclaim_stale_items",
    "request_regeneration",
    "resume_run",
    "run_config",
    "run_endpoint",
    "run_progress",
    "start_run",
    "worker_process_gone",
    "worker_started",
    "worker_stopped",
]
