"""Read queries behind the dashboard: small, indexed, paginated.

A review page reruns on every click, so each query here touches one page of rows or one
aggregate over an index, never a whole dataset. Navigation is keyset-based (the neighbour
of an item is the first row past its sort key), so moving through 100,000 items costs the
same as moving through ten. Everything is plain SQLAlchemy Core/ORM that runs unchanged on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, String, Text, and_, cast, false, func, or_, select
from sqlalchemy.orm import Session

from db.models import (
    Dataset,
    Generation,
    Image,
    Item,
    ItemStatus,
    QuestionType,
    ReviewEvent,
    Run,
    RunStatus,
)

ANY_FLAG = "*"
QUESTION_SNIPPET = 160
ANSWER_SNIPPET = 80
DEFAULT_PAGE_SIZE = 50
_FALSY_FLAG_TEXTS = ("", "0", "false", "null")


@dataclass(frozen=True)
class ItemFilter:
    """Which items a table or a next/previous walk covers. Empty tuples mean "any"."""

    dataset_id: int | None = None
    statuses: tuple[ItemStatus, ...] = ()
    question_types: tuple[QuestionType, ...] = ()
    run_id: int | None = None
    flag: str | None = None  # a quality flag name, or ANY_FLAG for "has any flag"
    text: str = ""  # case-insensitive substring of question, answer or external id


class ItemOrder(str, enum.Enum):
    SOURCE = "source"  # the order of the question file (ingest inserts in that order)
    RECENTLY_CHANGED = "recently_changed"


@dataclass(frozen=True)
class ItemRow:
    """One line of the review table: enough to scan and pick, nothing heavy."""

    id: int
    external_id: str
    status: ItemStatus
    question_type: QuestionType
    question: str
    correct_letter: str | None
    answer: str | None
    flags: tuple[str, ...]
    version: int
    generation_id: int | None
    updated_at: datetime


@dataclass(frozen=True)
class RunSummary:
    id: int
    dataset_id: int
    dataset_name: str
    status: RunStatus
    model: str | None
    total_items: int
    generated_items: int
    failed_items: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    message: str | None
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetOverview:
    id: int
    name: str
    created_at: datetime
    total: int
    counts: Mapping[ItemStatus, int]
    last_run: RunSummary | None

    @property
    def needs_review(self) -> int:
        return self.counts.get(ItemStatus.GENERATED, 0)

    @property
    def failed(self) -> int:
        return self.counts.get(ItemStatus.FAILED, 0)


@dataclass(frozen=True)
class ItemDetail:
    """Everything the item card shows. ORM objects are detached and fully loaded."""

    item: Item
    image: Image
    dataset_name: str
    current: Generation | None
    generations: list[Generation]  # newest first
    events: list[ReviewEvent]  # newest first


def _snippet(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _flag_names(flags: Mapping[str, Any] | None) -> tuple[str, ...]:
    if not flags:
        return ()
    return tuple(sorted(name for name, value in flags.items() if value not in (None, False, "")))


def _flag_condition(flag: str) -> ColumnElement[bool]:
    # Most generations have no flag: the plain text comparison rejects them before any
    # JSON is parsed.
    flagged = and_(
        Generation.quality_flags.is_not(None),
        cast(Generation.quality_flags, Text).not_in(["{}", "null"]),
    )
    if flag == ANY_FLAG:
        return flagged
    # `as_string()` is JSON_EXTRACT on SQLite and ->> on PostgreSQL; the cast makes SQLite's
    # integer 1/0 for true/false comparable with PostgreSQL's text 'true'/'false'.
    value = cast(Generation.quality_flags[flag].as_string(), String)
    return and_(flagged, value.is_not(None), func.lower(value).not_in(_FALSY_FLAG_TEXTS))


def _conditions(item_filter: ItemFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if item_filter.dataset_id is not None:
        conditions.append(Item.dataset_id == item_filter.dataset_id)
    if item_filter.statuses:
        conditions.append(Item.status.in_(item_filter.statuses))
    if item_filter.question_types:
        conditions.append(Item.question_type.in_(item_filter.question_types))
    if item_filter.run_id is not None:
        conditions.append(Item.run_id == item_filter.run_id)
    if item_filter.flag:
        conditions.append(_flag_condition(item_filter.flag))
    text = item_filter.text.strip()
    if text:
        conditions.append(
            or_(
                Item.question.icontains(text, autoescape=True),
                Item.external_id.icontains(text, autoescape=True),
                Generation.answer.icontains(text, autoescape=True),
            )
        )
    return conditions


def _needs_generation(item_filter: ItemFilter) -> bool:
    return bool(item_filter.flag or item_filter.text.strip())


def _filtered(statement: Select[Any], item_filter: ItemFilter, *, join: bool) -> Select[Any]:
    if join or _needs_generation(item_filter):
        statement = statement.outerjoin(Generation, Generation.id == Item.current_generation_id)
    return statement.where(*_conditions(item_filter))


def _ordered(statement: Select[Any], order: ItemOrder) -> Select[Any]:
    if order is ItemOrder.RECENTLY_CHANGED:
        return statement.order_by(Item.updated_at.desc(), Item.id.desc())
    return statement.order_by(Item.id)


def list_items(
    session: Session,
    item_filter: ItemFilter,
    *,
    offset: int = 0,
    limit: int = DEFAULT_PAGE_SIZE,
    order: ItemOrder = ItemOrder.SOURCE,
) -> list[ItemRow]:
    """One page of light rows for the review table.

    The page's ids are found first (an index-only walk past `offset` rows), then only those
    rows are joined with their generations: skipped rows cost no join.
    """
    page_ids = _ordered(
        _filtered(select(Item.id).select_from(Item), item_filter, join=False), order
    ).offset(max(offset, 0)).limit(max(limit, 0))
    statement = _ordered(
        select(
            Item.id,
            Item.external_id,
            Item.status,
            Item.question_type,
            func.substr(Item.question, 1, QUESTION_SNIPPET + 1),
            Generation.correct_letter,
            func.substr(Generation.answer, 1, ANSWER_SNIPPET + 1),
            Generation.quality_flags,
            Item.version,
            Item.current_generation_id,
            Item.updated_at,
        )
        .select_from(Item)
        .outerjoin(Generation, Generation.id == Item.current_generation_id)
        .where(Item.id.in_(page_ids.scalar_subquery())),
        order,
    )
    return [
        ItemRow(
            id=row[0],
            external_id=row[1],
            status=row[2],
            question_type=row[3],
            question=_snippet(row[4], QUESTION_SNIPPET) or "",
            correct_letter=row[5],
            answer=_snippet(row[6], ANSWER_SNIPPET),
            flags=_flag_names(row[7]),
            version=row[8],
            generation_id=row[9],
            updated_at=row[10],
        )
        for row in session.execute(statement)
    ]


def count_items(session: Session, item_filter: ItemFilter, *, cap: int | None = None) -> int:
    """Items matching the filter; with `cap`, counting stops there (show "1,000+").

    A text search cannot use an index, so a page may cap its count to stay fast.
    """
    if cap is None:
        statement = _filtered(select(func.count()).select_from(Item), item_filter, join=False)
        return int(session.scalar(statement) or 0)
    matches = _filtered(select(Item.id).select_from(Item), item_filter, join=False)
    capped = matches.limit(max(cap, 0)).subquery()
    return int(session.scalar(select(func.count()).select_from(capped)) or 0)


def neighbours(
    session: Session,
    item_filter: ItemFilter,
    item_id: int,
    *,
    order: ItemOrder = ItemOrder.SOURCE,
) -> tuple[int | None, int | None]:
    """(previous id, next id) within the filter, relative to `item_id`'s place in `order`.

    The item itself need not match the filter any more (it may just have been accepted
    while the table shows generated items): its sort key still says where it was.
    """
    base = _filtered(select(Item.id).select_from(Item), item_filter, join=False)
    if order is ItemOrder.RECENTLY_CHANGED:
        changed = session.scalar(select(Item.updated_at).where(Item.id == item_id))
        if changed is None:
            return None, None
        newer = or_(Item.updated_at > changed, and_(Item.updated_at == changed, Item.id > item_id))
        older = or_(Item.updated_at < changed, and_(Item.updated_at == changed, Item.id < item_id))
        previous = base.where(newer).order_by(Item.updated_at, Item.id).limit(1)
        following = base.where(older).order_by(Item.updated_at.desc(), Item.id.desc()).limit(1)
    else:
        previous = base.where(Item.id < item_id).order_by(Item.id.desc()).limit(1)
        following = base.where(Item.id > item_id).order_by(Item.id).limit(1)
    return session.scalar(previous), session.scalar(following)


def status_counts(session: Session, dataset_id: int | None = None) -> dict[ItemStatus, int]:
    """Items per status (every status present, zero when none)."""
    statement = select(Item.status, func.count()).group_by(Item.status)
    if dataset_id is not None:
        statement = statement.where(Item.dataset_id == dataset_id)
    counts = {status: 0 for status in ItemStatus}
    for status, count in session.execute(statement):
        counts[status] = int(count)
    return counts


def letter_histogram(
    session: Session, dataset_id: int, statuses: Iterable[ItemStatus] | None = None
) -> dict[str, int]:
    """How often each letter is the correct one among multiple-choice items, by letter."""
    statement = (
        select(Generation.correct_letter, func.count())
        .select_from(Item)
        .join(Generation, Generation.id == Item.current_generation_id)
        .where(
            Item.dataset_id == dataset_id,
            Item.question_type == QuestionType.MULTIPLE_CHOICE,
            Generation.correct_letter.is_not(None),
        )
        .group_by(Generation.correct_letter)
    )
    wanted = tuple(statuses) if statuses is not None else ()
    if statuses is not None:
        statement = statement.where(Item.status.in_(wanted) if wanted else false())
    return {letter: int(count) for letter, count in sorted(session.execute(statement))}


def _run_summary(run: Run, dataset_name: str) -> RunSummary:
    config = dict(run.config or {})
    endpoint = config.get("endpoint")
    model = config.get("model") or (endpoint.get("model") if isinstance(endpoint, dict) else None)
    return RunSummary(
        id=run.id,
        dataset_id=run.dataset_id,
        dataset_name=dataset_name,
        status=run.status,
        model=model if isinstance(model, str) else None,
        total_items=run.total_items,
        generated_items=run.generated_items,
        failed_items=run.failed_items,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        message=run.message,
        config=config,
    )


def recent_runs(
    session: Session, limit: int = 10, *, dataset_id: int | None = None
) -> list[RunSummary]:
    """The newest runs first, with their dataset's name."""
    statement = (
        select(Run, Dataset.name)
        .join(Dataset, Dataset.id == Run.dataset_id)
        .order_by(Run.id.desc())
        .limit(limit)
    )
    if dataset_id is not None:
        statement = statement.where(Run.dataset_id == dataset_id)
    return [_run_summary(run, name) for run, name in session.execute(statement)]


def dataset_overview(session: Session) -> list[DatasetOverview]:
    """Every dataset, newest first: counts by status and its latest run."""
    datasets = list(session.scalars(select(Dataset).order_by(Dataset.id.desc())))
    if not datasets:
        return []
    counts: dict[int, dict[ItemStatus, int]] = {d.id: {s: 0 for s in ItemStatus} for d in datasets}
    grouped = select(Item.dataset_id, Item.status, func.count()).group_by(
        Item.dataset_id, Item.status
    )
    for dataset_id, status, count in session.execute(grouped):
        if dataset_id in counts:
            counts[dataset_id][status] = int(count)
    latest_ids = select(func.max(Run.id)).group_by(Run.dataset_id)
    runs = {run.dataset_id: run for run in session.scalars(select(Run).where(Run.id.in_(latest_ids)))}
    overview = []
    for dataset in datasets:
        run = runs.get(dataset.id)
        overview.append(
            DatasetOverview(
                id=dataset.id,
                name=dataset.name,
                created_at=dataset.created_at,
                total=sum(counts[dataset.id].values()),
                counts=counts[dataset.id],
                last_run=_run_summary(run, dataset.name) if run else None,
            )
        )
    return overview


def item_detail(session: Session, item_id: int) -> ItemDetail | None:
    """The item card's data, or None when no such item exists (e.g. a stale deep link)."""
    item = session.get(Item, item_id)
    if item is None:
        return None
    image = session.get_one(Image, item.image_id)
    dataset_name = session.scalar(select(Dataset.name).where(Dataset.id == item.dataset_id)) or ""
    generations = list(
        session.scalars(
            select(Generation).where(Generation.item_id == item_id).order_by(Generation.id.desc())
        )
    )
    current = next((g for g in generations if g.id == item.current_generation_id), None)
    events = list(
        session.scalars(
            select(ReviewEvent)
            .where(ReviewEvent.item_id == item_id)
            .order_by(ReviewEvent.id.desc())
        )
    )
    return ItemDetail(
        item=item,
        image=image,
        dataset_name=dataset_name,
        current=current,
        generations=generations,
        events=events,
    )


def flag_names(session: Session, dataset_id: int, *, scan_limit: int = 2000) -> list[str]:
    """Quality flag names seen on current generations (for a filter's choices).

    Reads at most `scan_limit` distinct flag sets, so a huge dataset cannot slow the page.
    """
    statement = (
        select(cast(Generation.quality_flags, Text))
        .select_from(Item)
        .join(Generation, Generation.id == Item.current_generation_id)
        .where(Item.dataset_id == dataset_id, _flag_condition(ANY_FLAG))
        .distinct()
        .limit(scan_limit)
    )
    names: set[str] = set()
    for (text,) in session.execute(statement):
        try:
            names.update(_flag_names(json.loads(text)))
        except (TypeError, ValueError):
            continue
    return sorted(names)


def dataset_by_name(session: Session, name: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.name == name))


def filtered_items(statement: Select[Any], item_filter: ItemFilter) -> Select[Any]:
    """`statement` over items, outer-joined with their current generation, narrowed to the
    filter (for callers that also look at the generation's columns)."""
    return _filtered(statement, item_filter, join=True)


def flag_condition(flag: str) -> ColumnElement[bool]:
    """True for items whose current generation carries `flag` (ANY_FLAG: any flag)."""
    return _flag_condition(flag)
