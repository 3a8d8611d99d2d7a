"""The items table as a work queue: claim, release, store outcomes, finish runs.

Every function here runs inside one write transaction handed in by the worker's single
writer, so a batch of results, their item updates and the run's counters commit together.

Claims use `SELECT ... FOR UPDATE SKIP LOCKED` (PostgreSQL: workers on several machines
never claim the same item; SQLite has one writer at a time and ignores the clause). A
claim stamps the item with the worker's id; storing an outcome only touches items still
claimed by that worker, so a late result for an item that was reclaimed, cancelled or
queued for regeneration meanwhile is dropped (its responses stay in the ledger).

Statements are Core bulk statements (one `executemany` per kind per batch): the worker
writes thousands of rows a second and the ORM unit of work would be the bottleneck.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from db.models import (
    Generation,
    GenerationSource,
    Image,
    Item,
    ItemStatus,
    QuestionType,
    RegenerateScope,
    Run,
    RunStatus,
)
from vqa_engine.generator import GenerationResult, ItemOutcome
from vqa_engine.ledger import LedgerRecord, record_entries
from vqa_engine.quality import check_generation
from vqa_engine.runs import utcnow

ITEMS = Item.__table__
RUNS = Run.__table__
GENERATIONS = Generation.__table__
IN_CHUNK = 500

# Built once: the writer runs these many times a second and building a statement costs
# more than executing it.
_OWNED = (
    select(ITEMS.c.id)
    .where(ITEMS.c.id.in_(bindparam("ids", expanding=True)),
           ITEMS.c.claimed_by == bindparam("worker"),
           ITEMS.c.status == ItemStatus.GENERATING)
    .with_for_update()
)
_INSERT_GENERATIONS = insert(GENERATIONS).returning(
    GENERATIONS.c.id, GENERATIONS.c.item_id, GENERATIONS.c.ok)
_FINISH_ITEM = (
    update(ITEMS)
    .where(ITEMS.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        attempts=ITEMS.c.attempts + bindparam("b_attempts", type_=Integer),
        last_error=bindparam("b_error"),
        current_generation_id=func.coalesce(bindparam("b_generation", type_=Integer),
                                            ITEMS.c.current_generation_id),
        claimed_by=None,
        claimed_at=None,
        version=ITEMS.c.version + 1,
        updated_at=bindparam("b_now"),
    )
)
_COUNTERS = ("requests", "ledger_hits", "retries", "prompt_tokens", "completion_tokens",
             "generated_items", "failed_items")
_ADD_USAGE = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("b_run"))
    .values({name: RUNS.c[name] + bindparam(f"b_{name}", type_=Integer) for name in _COUNTERS})
)
_ADD_USAGE_WITH_ERRORS = _ADD_USAGE.values(errors_by_type=bindparam("b_errors"))
_RUN_ERRORS = select(RUNS.c.errors_by_type).where(RUNS.c.id == bindparam("b_run")) \
    .with_for_update()


@dataclass(frozen=True)
class ClaimedItem:
    item_id: int
    external_id: str
    question: str
    question_type: QuestionType
    image_sha256: str
    prepared_path: str
    prepared_byte_size: int
    regeneration: int
    regenerate_scope: RegenerateScope | None
    regenerate_reason: str | None
    attempts: int
    current_generation_id: int | None


def _chunks(values: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(values), IN_CHUNK):
        yield list(values[start : start + IN_CHUNK])


def claim_items(session: Session, run_id: int, worker_id: str, limit: int) -> list[ClaimedItem]:
    """Take up to `limit` pending items of a run: they become `generating`, stamped with us."""
    ids = list(
        session.scalars(
            select(Item.id)
            .where(Item.run_id == run_id, Item.status == ItemStatus.PENDING)
            .order_by(Item.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not ids:
        return []
    now = utcnow()
    session.execute(
        update(ITEMS)
        .where(ITEMS.c.id.in_(ids))
        .values(status=ItemStatus.GENERATING, claimed_by=worker_id, claimed_at=now,
                version=ITEMS.c.version + 1, updated_at=now)
    )
    rows = session.execute(
        select(
            Item.id, Item.external_id, Item.question, Item.question_type, Image.sha256,
            Image.prepared_path, Image.prepared_byte_size, Item.regeneration, Item.regenerate_scope,
            Item.regenerate_reason, Item.attempts, Item.current_generation_id,
        )
        .join(Image, Image.id == Item.image_id)
        .where(Item.id.in_(ids))
        .order_by(Item.id)
    ).all()
    return [ClaimedItem(*row) for row in rows]


def previous_generations(
    session: Session, generation_ids: Sequence[int]
) -> dict[int, tuple[str | None, str | None, list[str]]]:
    """generation id -> (answer, explanation, distractors), for regeneration prompts."""
    found: dict[int, tuple[str | None, str | None, list[str]]] = {}
    for chunk in _chunks(list(generation_ids)):
        rows = session.execute(
            select(Generation.id, Generation.answer, Generation.explanation,
                   Generation.distractors).where(Generation.id.in_(chunk))
        )
        for gid, answer, explanation, distractors in rows:
            found[gid] = (answer, explanation, [str(d) for d in distractors or []])
    return found


def release_items(session: Session, worker_id: str, item_ids: Sequence[int]) -> int:
    """Give claimed items back (pause, cancel, shutdown): pending, no attempt counted."""
    released = 0
    now = utcnow()
    for chunk in _chunks(list(item_ids)):
        result = session.execute(
            update(ITEMS)
            .where(ITEMS.c.id.in_(chunk), ITEMS.c.claimed_by == worker_id,
                   ITEMS.c.status == ItemStatus.GENERATING)
            .values(status=ItemStatus.PENDING, claimed_by=None, claimed_at=None,
                    version=ITEMS.c.version + 1, updated_at=now)
        )
        released += int(result.rowcount or 0)
    return released


@dataclass
class RunUsage:
    """What a batch of requests cost a run; added to its counters."""

    requests: int = 0
    ledger_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generated: int = 0
    failed: int = 0
    errors: Counter[str] | None = None

    def add_errors(self, types: Iterable[str]) -> None:
        if self.errors is None:
            self.errors = Counter()
        self.errors.update(types)


def store_ledger(session: Session, records: Sequence[LedgerRecord]) -> dict[int, RunUsage]:
    """Store responses; returns each run's request and token usage."""
    record_entries(session, records)
    usage: dict[int, RunUsage] = defaultdict(RunUsage)
    for record in records:
        if record.run_id is None:
            continue
        entry = usage[record.run_id]
        entry.requests += 1
        entry.prompt_tokens += record.prompt_tokens
        entry.completion_tokens += record.completion_tokens
    return usage


def _generation_row(item_id: int, run_id: int, outcome: ItemOutcome, now: datetime,
                     **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        item_id=item_id, run_id=run_id, source=GenerationSource.MODEL, ok=False, answer=None,
        explanation=None, distractors=[], options={}, correct_letter=None, shuffle_seed=None,
        full_question=None, raw_answer=None, raw_distractors=None, model=outcome.model,
        prompt_version=outcome.prompt_version, latency_ms=None, prompt_tokens=0,
        completion_tokens=0, error_type=None, error_step=None, error_message=None,
        quality_flags={}, created_at=now,
    )
    row.update(values)
    return row


def _quality_flags(result: GenerationResult) -> dict[str, Any]:
    """Rule-based flags and the model-based checks' flags, in one mapping."""
    question_type = (QuestionType.MULTIPLE_CHOICE if result.correct_letter is not None
                     else QuestionType.FILL_IN_BLANK)
    flags: dict[str, Any] = dict(check_generation(
        question_type, result.answer, result.options, result.correct_letter, result.explanation,
        expected_options=result.expected_options, answer_method=result.answer_method,
        distractor_method=result.distractor_method,
    ))
    flags.update(result.check_flags)
    return flags


def store_outcomes(
    session: Session, run_id: int, worker_id: str, outcomes: Sequence[ItemOutcome]
) -> RunUsage:
    """Store finished items of one run: generations, item status, and the usage to count."""
    usage = RunUsage()
    if not outcomes:
        return usage
    by_item = {outcome.item_id: outcome for outcome in outcomes}
    owned: set[int] = set()
    for chunk in _chunks(list(by_item)):
        owned.update(session.scalars(_OWNED, {"ids": chunk, "worker": worker_id}))
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for item_id, outcome in by_item.items():
        usage.ledger_hits += outcome.ledger_hits  # retries are counted as they happen
        usage.add_errors(failure.error_type for failure in outcome.failures)
        usage.add_errors(outcome.check_errors)
        if item_id not in owned:
            continue
        for failure in outcome.failures:
            rows.append(_generation_row(
                item_id, run_id, outcome, now, answer=failure.answer,
                raw_answer=failure.raw_answer, raw_distractors=failure.raw_distractors,
                error_type=failure.error_type, error_step=failure.error_step,
                error_message=failure.error_message,
            ))
        if (result := outcome.result) is not None:
            rows.append(_generation_row(
                item_id, run_id, outcome, now, ok=True, answer=result.answer,
                explanation=result.explanation, distractors=result.distractors,
                options=result.options, correct_letter=result.correct_letter,
                shuffle_seed=result.shuffle_seed, full_question=result.full_question,
                raw_answer=result.raw_answer, raw_distractors=result.raw_distractors,
                latency_ms=outcome.latency_ms, prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                quality_flags=_quality_flags(result),
            ))
    current: dict[int, int] = {}
    if rows:
        returned = session.execute(_INSERT_GENERATIONS, rows)
        current = {item_id: gid for gid, item_id, ok in returned if ok}

    updates: list[dict[str, Any]] = []
    for item_id in owned:
        outcome = by_item[item_id]
        if outcome.ok:
            usage.generated += 1
            status, error = ItemStatus.GENERATED, None
        else:
            usage.failed += 1
            status = ItemStatus.FAILED
            last = outcome.last_failure
            error = f"{last.error_step}: {last.error_message}" if last else "failed"
        updates.append(dict(
            b_id=item_id, b_status=status, b_attempts=outcome.attempts, b_error=error,
            b_generation=current.get(item_id), b_now=now,
        ))
    if updates:
        session.execute(_FINISH_ITEM, updates)
    return usage


def add_usage(session: Session, run_id: int, usage: RunUsage) -> None:
    """Add a batch's usage to the run's counters in one UPDATE (increments, so concurrent
    workers on PostgreSQL never lose each other's counts)."""
    params: dict[str, Any] = {
        "b_run": run_id,
        "b_requests": usage.requests,
        "b_ledger_hits": usage.ledger_hits,
        "b_retries": usage.retries,
        "b_prompt_tokens": usage.prompt_tokens,
        "b_completion_tokens": usage.completion_tokens,
        "b_generated_items": usage.generated,
        "b_failed_items": usage.failed,
    }
    if not usage.errors:
        session.execute(_ADD_USAGE, params)
        return
    current = session.scalar(_RUN_ERRORS, {"b_run": run_id}) or {}
    merged = Counter({str(k): int(v) for k, v in current.items()})
    merged.update(usage.errors)
    session.execute(_ADD_USAGE_WITH_ERRORS, {**params, "b_errors": dict(merged)})


def mark_running(session: Session, run_id: int, worker_id: str) -> bool:
    """A worker starts on a queued run. False when the run is no longer active."""
    run = session.get(Run, run_id, with_for_update=True)
    if run is None or not run.status.is_active:
        return False
    now = utcnow()
    run.status = RunStatus.RUNNING
    run.started_at = run.started_at or now
    run.worker_id = worker_id
    run.heartbeat_at = now
    run.message = None
    return True


def set_run_status(session: Session, run_id: int, status: RunStatus, message: str | None,
                   *, only_if_active: bool = True) -> bool:
    run = session.get(Run, run_id, with_for_update=True)
    if run is None or (only_if_active and not run.status.is_active):
        return False
    run.status = status
    run.message = message
    if status.is_finished:
        run.finished_at = utcnow()
    return True


@dataclass(frozen=True)
class RunRemainder:
    pending: int
    generating: int
    completed: bool


def finish_if_done(session: Session, run_id: int) -> RunRemainder:
    """Mark the run completed when none of its items is pending or being generated."""
    counts = dict(
        session.execute(
            select(Item.status, func.count())
            .where(Item.run_id == run_id,
                   Item.status.in_([ItemStatus.PENDING, ItemStatus.GENERATING]))
            .group_by(Item.status)
        ).all()
    )
    pending = int(counts.get(ItemStatus.PENDING, 0))
    generating = int(counts.get(ItemStatus.GENERATING, 0))
    completed = False
    if pending == 0 and generating == 0:
        completed = set_run_status(session, run_id, RunStatus.COMPLETED, None)
    return RunRemainder(pending, generating, completed)


def heartbeat(session: Session, worker_id: str, run_ids: Sequence[int]) -> None:
    """Refresh our claims (so no one reclaims them) and the runs' heartbeat."""
    now = utcnow()
    session.execute(
        update(ITEMS)
        .where(ITEMS.c.claimed_by == worker_id, ITEMS.c.status == ItemStatus.GENERATING)
        .values(claimed_at=now)
    )
    if run_ids:
        session.execute(
            update(Run.__table__)
            .where(Run.__table__.c.id.in_(list(run_ids)))
            .values(heartbeat_at=now, worker_id=worker_id)
        )
