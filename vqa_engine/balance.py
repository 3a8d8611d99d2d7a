"""Balanced letters: spread correct letters evenly over a dataset's multiple-choice items.

A model (or a fixed shuffle) can leave "B" correct far more often than "D", and a benchmark
whose answers lean on one letter rewards guessing it. Balancing re-orders options so that,
among items with the same option count, every letter is correct within one time of every
other letter. The plan is deterministic for a seed, keeps as many items as possible where
they are, and never changes an item's texts: a changed item gets a new RESHUFFLE generation
with the correct text moved to its target letter and the distractors in their old relative
order, plus one review event holding the state before and after, like a curator's reshuffle.
The events of one balancing form a BALANCE review batch, so `bulk.undo_batch` takes the whole
balancing back; `plan_balance` shows the moves and the letters after them without changing
anything.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from db.engine import Database
from db.models import (
    BulkAction,
    Dataset,
    Generation,
    Item,
    ItemStatus,
    QuestionType,
    ReviewAction,
)
from vqa_engine.bulk import record_chunk, start_batch
from vqa_engine.errors import ValidationError
from vqa_engine.records import LETTERS
from vqa_engine.review import (
    add_reordered_generation,
    clean_curator,
    option_parts,
    options_with_answer_at,
    snapshot,
    stale_conflict,
)

PAGE_SIZE = 500
DEFAULT_STATUSES: tuple[ItemStatus, ...] = (ItemStatus.GENERATED, ItemStatus.ACCEPTED)

Histogram = dict[int, dict[str, int]]


@dataclass(frozen=True)
class BalanceSummary:
    """Per option count, how many items had each correct letter before and after."""

    changed: int
    unchanged: int
    histogram_before: Histogram
    histogram_after: Histogram
    skipped: int = 0  # planned moves left alone because the item changed meanwhile
    batch_id: int | None = None  # the review batch to undo it with (None: nothing moved)


@dataclass(frozen=True)
class BalancePlan:
    """What balancing would do, before doing it: the moves and the letters after them."""

    total: int
    moves: dict[int, tuple[str | None, str]]  # item id -> (letter now, target letter)
    histogram_before: Histogram
    histogram_after: Histogram

    @property
    def moving(self) -> int:
        return len(self.moves)


@dataclass(frozen=True)
class _Placement:
    item_id: int
    option_count: int
    letter: str | None


def _placements(
    database: Database, dataset_id: int, statuses: tuple[ItemStatus, ...]
) -> Iterator[_Placement]:
    """Every eligible item's option count and correct letter, read a page at a time."""
    last_id = 0
    while True:
        with database.read() as session:
            rows = session.execute(
                select(Item.id, Generation.options, Generation.correct_letter)
                .join(Generation, Generation.id == Item.current_generation_id)
                .where(
                    Item.dataset_id == dataset_id,
                    Item.id > last_id,
                    Item.question_type == QuestionType.MULTIPLE_CHOICE,
                    Item.status.in_(statuses),
                    Generation.ok.is_(True),
                )
                .order_by(Item.id)
                .limit(PAGE_SIZE)
            ).all()
        if not rows:
            return
        for item_id, options, letter in rows:
            count = len(options or {})
            if count >= 2:
                yield _Placement(item_id, count, letter if letter in options else None)
        last_id = rows[-1][0]


def _histogram(placements: Iterable[_Placement]) -> Histogram:
    histogram: Histogram = {}
    for placement in placements:
        counts = histogram.setdefault(
            placement.option_count, dict.fromkeys(LETTERS[: placement.option_count], 0)
        )
        if placement.letter is not None:
            counts[placement.letter] += 1
    return dict(sorted(histogram.items()))


def _plan_group(placements: list[_Placement], seed: int) -> dict[int, str]:
    """Target letters for items with one option count: {item_id: letter} for moves only.

    The letters already holding the most items get the remainder's extra slot, so a
    balanced group needs no move and an unbalanced one needs the fewest; ties, and which
    items stay, follow a seeded shuffle of the items in id order.
    """
    count = placements[0].option_count
    letters = list(LETTERS[:count])
    rng = random.Random(seed * 1_000_003 + count)
    ordered = sorted(placements, key=lambda p: p.item_id)
    rng.shuffle(ordered)
    tie_order = letters[:]
    rng.shuffle(tie_order)
    current = {letter: 0 for letter in letters}
    for placement in ordered:
        if placement.letter is not None:
            current[placement.letter] += 1
    base, extra = divmod(len(ordered), count)
    by_size = sorted(letters, key=lambda letter: (-current[letter], tie_order.index(letter)))
    quota = {letter: base + (1 if rank < extra else 0) for rank, letter in enumerate(by_size)}
    kept = {letter: 0 for letter in letters}
    movers: list[_Placement] = []
    for placement in ordered:
        if placement.letter is not None and kept[placement.letter] < quota[placement.letter]:
            kept[placement.letter] += 1
        else:
            movers.append(placement)
    open_slots = [
        letter for letter in tie_order for _ in range(quota[letter] - kept[letter])
    ]
    return {placement.item_id: letter for placement, letter in zip(movers, open_slots)}


def _dataset_exists(database: Database, dataset_id: int) -> None:
    with database.read() as session:
        if session.get(Dataset, dataset_id) is None:
            raise ValidationError(
                f"dataset {dataset_id} does not exist; pick one from `python -m vqa_engine "
                "datasets` or import one first"
            )


def _apply_page(
    database: Database,
    moves: dict[int, tuple[str | None, str]],
    *,
    curator: str,
    reason: str,
    statuses: tuple[ItemStatus, ...],
    batch_id: int,
) -> tuple[int, int]:
    """Apply planned moves {item_id: (letter planned from, target)}; (changed, skipped)."""
    skipped = 0
    changed: list[tuple[Item, dict[str, Any]]] = []
    try:
        with database.write() as session:
            items = session.scalars(
                select(Item).where(Item.id.in_(list(moves))).order_by(Item.id).with_for_update()
            ).all()
            generations = {g.id: g for g in session.scalars(select(Generation).where(
                Generation.id.in_([i.current_generation_id for i in items])))}
            skipped += len(moves) - len(items)
            for item in items:
                planned_from, target = moves[item.id]
                current = generations.get(item.current_generation_id or -1)
                answer, distractors, options, letter = option_parts(current)
                if (
                    current is None
                    or item.status not in statuses
                    or not answer
                    or letter != planned_from
                    or target not in LETTERS[: len(options)]
                ):
                    skipped += 1
                    continue
                before = snapshot(item, current)
                new_options = options_with_answer_at(answer, distractors, target)
                add_reordered_generation(session, item, current, answer=answer,
                                         distractors=distractors, options=new_options,
                                         letter=target, seed=None)
                changed.append((item, before))
            record_chunk(session, changed, curator=curator, action=ReviewAction.RESHUFFLE,
                         batch_id=batch_id, reason=reason)
    except StaleDataError:
        raise stale_conflict(min(moves)) from None
    return len(changed), skipped


def plan_balance(
    database: Database,
    dataset_id: int,
    *,
    seed: int = 0,
    statuses: Iterable[ItemStatus] = DEFAULT_STATUSES,
) -> BalancePlan:
    """The moves `balance_letters` would make with this seed, changing nothing."""
    wanted = tuple(ItemStatus(status) for status in statuses)
    _dataset_exists(database, dataset_id)
    groups: dict[int, list[_Placement]] = {}
    for placement in _placements(database, dataset_id, wanted):
        groups.setdefault(placement.option_count, []).append(placement)
    placements = [p for group in groups.values() for p in group]
    moves: dict[int, tuple[str | None, str]] = {}
    for group in groups.values():
        planned_from = {p.item_id: p.letter for p in group}
        for item_id, target in _plan_group(group, seed).items():
            moves[item_id] = (planned_from[item_id], target)
    after = [
        replace(p, letter=moves[p.item_id][1]) if p.item_id in moves else p for p in placements
    ]
    return BalancePlan(len(placements), moves, _histogram(placements), _histogram(after))


def balance_letters(
    database: Database,
    dataset_id: int,
    *,
    curator: str,
    seed: int = 0,
    statuses: Iterable[ItemStatus] = DEFAULT_STATUSES,
) -> BalanceSummary:
    """Re-order options so each option count's correct letters are within one of each other.

    The changes form one review batch (BALANCE), undone as a whole with `bulk.undo_batch`.
    """
    name = clean_curator(curator)
    wanted = tuple(ItemStatus(status) for status in statuses)
    plan = plan_balance(database, dataset_id, seed=seed, statuses=wanted)
    reason = f"balance letters (seed {seed})"
    changed = skipped = 0
    batch_id: int | None = None
    ordered_ids = sorted(plan.moves)
    if ordered_ids:
        batch_id = start_batch(database, dataset_id, BulkAction.BALANCE, curator=name,
                               description=reason)
    for start in range(0, len(ordered_ids), PAGE_SIZE):
        page = {item_id: plan.moves[item_id] for item_id in ordered_ids[start : start + PAGE_SIZE]}
        assert batch_id is not None
        page_changed, page_skipped = _apply_page(
            database, page, curator=name, reason=reason, statuses=wanted, batch_id=batch_id
        )
        changed += page_changed
        skipped += page_skipped
    after = _histogram(_placements(database, dataset_id, wanted))
    return BalanceSummary(
        changed=changed,
        unchanged=plan.total - changed,
        histogram_before=plan.histogram_before,
        histogram_after=after,
        skipped=skipped,
        batch_id=batch_id,
    )
