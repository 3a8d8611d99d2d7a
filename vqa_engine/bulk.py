"""Bulk actions on the Review page's current filter, and undo of a whole batch.

A curator sees first what an action would do (`preview`: how many matching items it would
change and why the others are skipped), then confirms with the preview's token; `apply`
refuses when the items the action would change are no longer those previewed (one was
added, removed or changed), so nobody confirms a number they did not see.

Each bulk action is one `ReviewBatch` and, per changed item, an ordinary `ReviewEvent`
carrying the batch id, so every item's history shows it and single undo keeps working.
Large filters are applied a chunk at a time, each chunk in one transaction that also counts
it on the batch: a batch cut short by a crash holds exactly the events that were applied,
and `undo_batch` takes back exactly those. Regeneration queues all its items in one run.

`undo_batch` is all or nothing: every item must be undoable by the rules of
`review.undo`, else nothing is undone and the refusal names the first items and why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Text, and_, case, cast, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from db.engine import Database
from db.models import (
    BulkAction,
    Generation,
    Item,
    ItemStatus,
    QuestionType,
    RegenerateScope,
    ReviewAction,
    ReviewBatch,
    ReviewEvent,
    utcnow,
)
from db.queries import ANY_FLAG, ItemFilter, filtered_items, flag_condition
from vqa_engine import review
from vqa_engine.errors import ConflictError, ValidationError, VQAError
from vqa_engine.quality import REFUSAL

if TYPE_CHECKING:
    from vqa_engine.runs import RunSettings
    from vqa_engine.settings import Endpoint

CHUNK_SIZE = 500
BLOCKERS_SHOWN = 3
ELIGIBLE = "eligible"
REVIEW_PAGE_ACTIONS = (BulkAction.ACCEPT, BulkAction.REJECT, BulkAction.REGENERATE,
                       BulkAction.RESHUFFLE)

ACTION_LABELS = {
    BulkAction.ACCEPT: "accept items with no flags",
    BulkAction.REJECT: "reject refusals",
    BulkAction.REGENERATE: "regenerate failed or flagged items (one run)",
    BulkAction.RESHUFFLE: "reshuffle options",
    BulkAction.BALANCE: "balance correct letters",
}
_VERBS = {
    BulkAction.ACCEPT: "accept",
    BulkAction.REJECT: "reject",
    BulkAction.REGENERATE: "regenerate",
    BulkAction.RESHUFFLE: "reshuffle",
    BulkAction.BALANCE: "re-order",
}
_REVIEW_ACTIONS = {
    BulkAction.ACCEPT: ReviewAction.ACCEPT,
    BulkAction.REJECT: ReviewAction.REJECT,
    BulkAction.RESHUFFLE: ReviewAction.RESHUFFLE,
}


@dataclass(frozen=True)
class BulkPreview:
    """What `apply` would do to the filter's items; `token` confirms exactly this."""

    action: BulkAction
    matching: int
    eligible: int
    skipped: tuple[tuple[str, int], ...]  # (why, how many), largest first
    token: str

    @property
    def sentence(self) -> str:
        verb = _VERBS[self.action]
        text = f"{verb} {self.eligible} of {self.matching} items matching the filter"
        skipped = self.matching - self.eligible
        if skipped:
            reasons = ", ".join(f"{count} {why}" for why, count in self.skipped)
            text += f"; {skipped} skipped: {reasons}"
        return text


@dataclass(frozen=True)
class BulkResult:
    batch_id: int
    action: BulkAction
    changed: int
    skipped: int  # previewed items that changed meanwhile and were left alone
    run_id: int | None = None


@dataclass(frozen=True)
class BatchSummary:
    id: int
    dataset_id: int
    action: BulkAction
    curator: str
    description: str
    item_count: int
    run_id: int | None
    created_at: datetime
    undone_at: datetime | None
    undone_by: str | None

    @property
    def undone(self) -> bool:
        return self.undone_at is not None


@dataclass(frozen=True)
class BatchUndoResult:
    batch_id: int
    restored: int
    already_undone: int  # items of the batch undone one by one before


# ---------------------------------------------------------------- which items


def _classification(action: BulkAction) -> ColumnElement[str]:
    """Per item of the filter: ELIGIBLE or the reason the action skips it."""
    no_content = or_(Item.current_generation_id.is_(None), Generation.ok.is_not(True))
    waiting = Item.status.in_([ItemStatus.PENDING, ItemStatus.GENERATING])
    undecidable = or_(Item.status.not_in(review.DECIDABLE), no_content)
    decided = Item.status.in_([ItemStatus.ACCEPTED, ItemStatus.REJECTED])
    flagged = flag_condition(ANY_FLAG)
    if action is BulkAction.ACCEPT:
        whens = [(undecidable, "not generated"), (decided, "already decided"),
                 (flagged, "flagged")]
        otherwise = ELIGIBLE
    elif action is BulkAction.REJECT:
        whens = [(undecidable, "not generated"), (decided, "already decided"),
                 (flag_condition(REFUSAL), ELIGIBLE)]
        otherwise = "not a refusal"
    elif action is BulkAction.REGENERATE:
        whens = [(waiting, "pending or generating"),
                 (Item.status == ItemStatus.ACCEPTED, "already accepted"),
                 (Item.status == ItemStatus.FAILED, ELIGIBLE), (flagged, ELIGIBLE)]
        otherwise = "not failed or flagged"
    elif action is BulkAction.RESHUFFLE:
        has_options = and_(
            Generation.options.is_not(None),
            func.length(func.coalesce(Generation.answer, "")) > 0,
            cast(Generation.options, Text).not_in(["{}", "null"]),
        )
        whens = [(Item.question_type != QuestionType.MULTIPLE_CHOICE, "fill-in-blank"),
                 (undecidable, "not generated"), (has_options, ELIGIBLE)]
        otherwise = "no options"
    else:
        raise ValidationError(
            f"bulk action {action.value!r} does not apply to a filter; use "
            "balance_letters for balancing"
        )
    return case(*whens, else_=otherwise)


def _checked_filter(item_filter: ItemFilter) -> ItemFilter:
    if item_filter.dataset_id is None:
        raise ValidationError("a bulk action needs one dataset; choose a dataset first")
    return item_filter


def _token(action: BulkAction, count: int, version_sum: int, last_id: int) -> str:
    text = f"{action.value}:{count}:{version_sum}:{last_id}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def preview(database: Database, item_filter: ItemFilter, action: BulkAction) -> BulkPreview:
    """How many items of the filter `action` would change, and why the rest are skipped."""
    action = BulkAction(action)
    label = _classification(action).label("why")
    statement = filtered_items(
        select(label, func.count(), func.sum(Item.version), func.max(Item.id)).select_from(Item),
        _checked_filter(item_filter),
    ).group_by(label)
    with database.read() as session:
        rows = session.execute(statement).all()
    matching = sum(int(count) for _, count, _, _ in rows)
    eligible, version_sum, last_id = 0, 0, 0
    skipped: list[tuple[str, int]] = []
    for why, count, versions, top in rows:
        if why == ELIGIBLE:
            eligible, version_sum, last_id = int(count), int(versions or 0), int(top or 0)
        else:
            skipped.append((str(why), int(count)))
    skipped.sort(key=lambda pair: (-pair[1], pair[0]))
    return BulkPreview(action, matching, eligible, tuple(skipped),
                       _token(action, eligible, version_sum, last_id))


def _eligible_rows(
    database: Database, item_filter: ItemFilter, action: BulkAction
) -> list[tuple[int, int]]:
    """(id, version) of every item the action would change, read a page at a time."""
    label = _classification(action)
    rows: list[tuple[int, int]] = []
    last_id = 0
    while True:
        statement = filtered_items(select(Item.id, Item.version).select_from(Item), item_filter)
        statement = statement.where(label == ELIGIBLE, Item.id > last_id) \
            .order_by(Item.id).limit(CHUNK_SIZE * 10)
        with database.read() as session:
            page = [(int(i), int(v)) for i, v in session.execute(statement)]
        if not page:
            return rows
        rows.extend(page)
        last_id = page[-1][0]


def first_eligible(database: Database, item_filter: ItemFilter, action: BulkAction) -> int | None:
    """One item the action would change (its run tells a regeneration which endpoint)."""
    statement = filtered_items(select(Item.id).select_from(Item), _checked_filter(item_filter))
    statement = statement.where(_classification(BulkAction(action)) == ELIGIBLE) \
        .order_by(Item.id).limit(1)
    with database.read() as session:
        return session.scalar(statement)


def describe_filter(item_filter: ItemFilter) -> str:
    parts = []
    if item_filter.statuses:
        parts.append("status " + "/".join(s.value for s in item_filter.statuses))
    if item_filter.question_types:
        parts.append("type " + "/".join(t.value for t in item_filter.question_types))
    if item_filter.run_id is not None:
        parts.append(f"run {item_filter.run_id}")
    if item_filter.flag:
        parts.append("any flag" if item_filter.flag == ANY_FLAG else f"flag {item_filter.flag}")
    if item_filter.text.strip():
        parts.append(f"text {item_filter.text.strip()!r}")
    return ", ".join(parts) or "all items"


# ---------------------------------------------------------------- applying


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    size = CHUNK_SIZE
    for start in range(0, len(values), size):
        yield values[start : start + size]


def start_batch(
    database: Database, dataset_id: int, action: BulkAction, *, curator: str, description: str
) -> int:
    """The batch row, committed before any item changes so a cut-short batch is undoable."""
    with database.write() as session:
        batch = ReviewBatch(dataset_id=dataset_id, curator=curator, action=action,
                            description=description, item_count=0)
        session.add(batch)
        session.flush()
        return batch.id


def count_on_batch(session: Session, batch_id: int, changed: int) -> None:
    if changed:
        session.execute(
            update(ReviewBatch).where(ReviewBatch.id == batch_id)
            .values(item_count=ReviewBatch.item_count + changed)
        )


def _locked(session: Session, chunk: Sequence[tuple[int, int]]) -> list[Item]:
    """The chunk's items still at the version previewed, locked; the others are skipped.

    Their current generations are loaded with them and kept in `session.info` until the
    transaction ends (the identity map holds only weak references).
    """
    versions = dict(chunk)
    items = session.scalars(
        select(Item).where(Item.id.in_(list(versions))).order_by(Item.id).with_for_update()
    ).all()
    _load_generations(session, [item.current_generation_id for item in items])
    return [item for item in items if item.version == versions[item.id]]


def _load_generations(session: Session, ids: Sequence[int | None]) -> None:
    """Bring generations into the session at once, so per-item lookups need no query."""
    wanted = sorted({gid for gid in ids if gid is not None})
    kept = session.info.setdefault("bulk_generations", [])
    for start in range(0, len(wanted), CHUNK_SIZE):
        kept.extend(session.scalars(
            select(Generation).where(Generation.id.in_(wanted[start : start + CHUNK_SIZE]))
        ).all())


def _change(session: Session, item: Item, action: BulkAction) -> dict[str, Any] | None:
    """Change one item; its state before, or None when it no longer qualifies."""
    current = review.current_generation(session, item)
    before = review.snapshot(item, current)
    if action in (BulkAction.ACCEPT, BulkAction.REJECT):
        if item.status is not ItemStatus.GENERATED or current is None:
            return None
        item.status = ItemStatus.ACCEPTED if action is BulkAction.ACCEPT else ItemStatus.REJECTED
        item.updated_at = utcnow()
    elif action is BulkAction.RESHUFFLE:
        answer, distractors, old_options, _ = review.option_parts(current)
        if current is None or item.status not in review.DECIDABLE or not answer or not distractors:
            return None
        options, letter, seed = review.new_order(answer, distractors, old_options)
        review.add_reordered_generation(session, item, current, answer=answer,
                                        distractors=distractors, options=options,
                                        letter=letter, seed=seed)
    else:
        raise ValidationError(f"bulk action {action.value!r} is applied elsewhere")
    return before


def record_chunk(session: Session, changed: Sequence[tuple[Item, dict[str, Any]]], *,
                  curator: str, action: ReviewAction, batch_id: int,
                  reason: str | None, extra: dict[str, Any] | None = None) -> None:
    """One event per changed item, after one flush for the chunk (which bumps versions)."""
    session.flush()
    session.add_all(
        ReviewEvent(
            item_id=item.id, curator=curator, action=action, before=before,
            after={**review.snapshot(item, review.current_generation(session, item)),
                   **(extra or {})},
            reason=reason, batch_id=batch_id,
        )
        for item, before in changed
    )
    count_on_batch(session, batch_id, len(changed))


def _apply_chunks(database: Database, rows: Sequence[tuple[int, int]], action: BulkAction,
                  *, curator: str, batch_id: int, reason: str | None) -> int:
    total = 0
    for chunk in _chunks(rows):
        try:
            with database.write() as session:
                changed = []
                for item in _locked(session, chunk):
                    before = _change(session, item, action)
                    if before is not None:
                        changed.append((item, before))
                record_chunk(session, changed, curator=curator, action=_REVIEW_ACTIONS[action],
                              batch_id=batch_id, reason=reason)
        except StaleDataError:
            raise review.stale_conflict(chunk[0][0]) from None
        total += len(changed)
    return total


def _regenerate(database: Database, rows: Sequence[tuple[int, int]], *, curator: str,
                batch_id: int, reason: str | None, endpoint: Endpoint,
                settings: RunSettings | None) -> tuple[int, int]:
    """Record one REGENERATE event per item, then queue them all in one run."""
    from vqa_engine.runs import request_regeneration

    claimed: list[int] = []
    for chunk in _chunks(rows):
        try:
            with database.write() as session:
                changed = []
                for item in _locked(session, chunk):
                    if item.status not in review.REGENERATABLE:
                        continue
                    changed.append((item, review.snapshot(
                        item, review.current_generation(session, item))))
                    item.updated_at = utcnow()  # claims it: its version moves on
                record_chunk(session, changed, curator=curator,
                              action=ReviewAction.REGENERATE, batch_id=batch_id, reason=reason,
                              extra={"scope": RegenerateScope.WHOLE.value, "requested": True})
                done = [item.id for item, _ in changed]
        except StaleDataError:
            raise review.stale_conflict(chunk[0][0]) from None
        claimed.extend(done)
    if not claimed:
        return 0, 0
    try:
        run_id = request_regeneration(
            database, claimed, scope=RegenerateScope.WHOLE, reason=reason, endpoint=endpoint,
            **({"settings": settings} if settings is not None else {}),
        )
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}" if isinstance(exc, VQAError) else type(exc).__name__
        _finish_events(database, batch_id, {"requested": False, "error": cause})
        raise
    with database.write() as session:
        session.get_one(ReviewBatch, batch_id).run_id = run_id
    _finish_events(database, batch_id, {"run_id": run_id})
    return len(claimed), run_id


def _finish_events(database: Database, batch_id: int, extra: dict[str, Any]) -> None:
    """Write each regeneration event's state after the request (its queued state and run)."""
    last_id = 0
    while True:
        with database.write() as session:
            events = session.scalars(
                select(ReviewEvent)
                .where(ReviewEvent.batch_id == batch_id, ReviewEvent.id > last_id)
                .order_by(ReviewEvent.id).limit(CHUNK_SIZE)
            ).all()
            if not events:
                return
            items = {item.id: item for item in session.scalars(
                select(Item).where(Item.id.in_([e.item_id for e in events])))}
            for event in events:
                item = items.get(event.item_id)
                now = (review.snapshot(item, review.current_generation(session, item))
                       if item is not None and "run_id" in extra else event.after)
                event.after = {**event.after, **now, **extra}
            last_id = events[-1].id


def apply(
    database: Database,
    item_filter: ItemFilter,
    action: BulkAction,
    *,
    curator: str,
    token: str,
    reason: str | None = None,
    endpoint: Endpoint | None = None,
    settings: RunSettings | None = None,
) -> BulkResult:
    """Apply `action` to the items `preview` counted, as one batch.

    `token` is the confirmed preview's: if the items the action would change are no longer
    exactly those (added, removed, or changed since), nothing is done and `ConflictError`
    asks to look at the new preview. Regeneration needs `endpoint` (and the run settings)
    and queues every item in one run.
    """
    action = BulkAction(action)
    name = review.clean_curator(curator)
    item_filter = _checked_filter(item_filter)
    if action is BulkAction.REGENERATE and endpoint is None:
        raise ValidationError("regenerating needs an endpoint; pick the model to regenerate with")
    rows = _eligible_rows(database, item_filter, action)
    found = _token(action, len(rows), sum(v for _, v in rows), rows[-1][0] if rows else 0)
    if found != token:
        raise ConflictError(
            f"the items to {_VERBS[action]} changed since the preview (now {len(rows)}); "
            "look at the new preview and confirm again"
        )
    if not rows:
        raise ValidationError(
            f"no item of the filter can be {_VERBS[action]}ed; change the filter or the action"
        )
    assert item_filter.dataset_id is not None
    cleaned = (reason or "").strip() or None
    description = describe_filter(item_filter)
    batch_id = start_batch(database, item_filter.dataset_id, action, curator=name,
                           description=description)
    run_id: int | None = None
    if action is BulkAction.REGENERATE:
        assert endpoint is not None
        changed, run = _regenerate(database, rows, curator=name, batch_id=batch_id,
                                   reason=cleaned, endpoint=endpoint, settings=settings)
        run_id = run or None
    else:
        changed = _apply_chunks(database, rows, action, curator=name, batch_id=batch_id,
                                reason=cleaned or f"bulk {_VERBS[action]}: {description}")
    return BulkResult(batch_id, action, changed, len(rows) - changed, run_id)


# ---------------------------------------------------------------- undo and listing


def _blocked_message(batch: ReviewBatch, blocked: list[tuple[int, str]], total: int) -> str:
    shown = "; ".join(why for _, why in blocked[:BLOCKERS_SHOWN])
    more = f"; and {len(blocked) - BLOCKERS_SHOWN} more" if len(blocked) > BLOCKERS_SHOWN else ""
    ids = ", ".join(str(item_id) for item_id, _ in blocked[:BLOCKERS_SHOWN])
    return (
        f"batch {batch.id} ({batch.action.value} of {total} items) cannot be undone: "
        f"{len(blocked)} item(s) changed since (items {ids}{'…' if len(blocked) > BLOCKERS_SHOWN else ''}): "
        f"{shown}{more}. Nothing was undone; undo those changes first, or undo the other "
        "items one by one from their history"
    )


def undo_batch(database: Database, batch_id: int, *, curator: str) -> BatchUndoResult:
    """Restore every item of the batch to its state before it, or refuse and change nothing.

    Events of the batch already undone one by one are left as they are. The whole undo is
    one transaction, so it is all or nothing even on a crash.
    """
    name = review.clean_curator(curator)
    try:
        with database.write() as session:
            batch = session.scalar(
                select(ReviewBatch).where(ReviewBatch.id == batch_id).with_for_update()
            )
            if batch is None:
                raise ValidationError(f"batch {batch_id} does not exist; reload the page")
            if batch.undone_at is not None:
                raise ConflictError(
                    f"batch {batch_id} was already undone by {batch.undone_by}; "
                    "repeat the bulk action to have it again"
                )
            events = session.scalars(
                select(ReviewEvent)
                .where(ReviewEvent.batch_id == batch_id,
                       ReviewEvent.action != ReviewAction.UNDO)
                .order_by(ReviewEvent.id)
            ).all()
            standing = [event for event in events if event.undone_by is None]
            items: dict[int, Item] = {}
            blocked: list[tuple[int, str]] = []
            for chunk in _chunks(standing):
                loaded = session.scalars(
                    select(Item).where(Item.id.in_([e.item_id for e in chunk]))
                    .with_for_update()).all()
                items.update((item.id, item) for item in loaded)
                _load_generations(session, [item.current_generation_id for item in loaded] + [
                    (e.before or {}).get("current_generation_id") for e in chunk])
                later = review.later_events(session, chunk)
                for event in chunk:
                    item = items.get(event.item_id)
                    if item is None:
                        continue
                    why = review.undo_blocker(session, event, item, later.get(item.id))
                    if why is not None:
                        blocked.append((item.id, why))
            if blocked:
                raise ConflictError(_blocked_message(batch, blocked, len(events)))
            pairs = [(items[e.item_id], e) for e in standing if e.item_id in items]
            for chunk in _chunks(pairs):
                review.restore_many(session, chunk, curator=name)
            restored = len(pairs)
            batch.undone_at = utcnow()
            batch.undone_by = name
            return BatchUndoResult(batch_id, restored, len(events) - len(standing))
    except StaleDataError:
        raise ConflictError(
            f"an item of batch {batch_id} was changed while the undo was being saved; "
            "nothing was undone, try again"
        ) from None


def list_batches(database: Database, dataset_id: int, limit: int = 20) -> list[BatchSummary]:
    """A dataset's bulk actions, newest first."""
    with database.read() as session:
        batches = session.scalars(
            select(ReviewBatch).where(ReviewBatch.dataset_id == dataset_id)
            .order_by(ReviewBatch.id.desc()).limit(limit)
        ).all()
        return [
            BatchSummary(b.id, b.dataset_id, b.action, b.curator, b.description, b.item_count,
                         b.run_id, b.created_at, b.undone_at, b.undone_by)
            for b in batches
        ]
