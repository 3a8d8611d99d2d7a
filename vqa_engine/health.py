"""Dataset health: the figures that tell whether a dataset is fit to publish.

A benchmark whose correct answers lean on one letter, whose correct option is often the
only long one, or whose curators disagree, measures something other than what it claims.
These figures are read with a handful of aggregate queries (GROUP BY over indexed columns);
only the quality flags, stored as JSON, are counted in Python, reading just the flagged
rows, a page at a time. So the cost grows with the dataset but the memory does not.

Definitions:

- Letters: per option count, how often each letter is the correct one, with Pearson's
  chi-square test against an even spread (every letter equally likely). The p-value is the
  chance of a spread at least this uneven if letters were really drawn evenly; below
  `SIGNIFICANCE` the spread is called uneven. A correct letter that is not among the item's
  own options (a broken record) is left out of its group's counts.
- Flags: items whose current generation carries the flag (any flag name that appears).
- Length bias: the share of multiple-choice items whose current generation carries the
  `length_bias` flag (the correct option is the only longest; judged with at least
  `QualityConfig.length_bias_min_options` options). The flag, not a fresh measurement, so
  the figure agrees with what the review page filters on. `length_bias_chance` is the share
  expected if length said nothing: 1/k for an item with k options (less where lengths tie).
- Standing decision: an accept or reject that was not undone and was made after the item's
  content last changed (a model generation or an edit; a reshuffle keeps the texts and so
  keeps decisions), on an item that can be decided (generated, accepted or rejected); per
  item and curator only the latest counts. This is the rule team review hands items out by.
- Agreement: among items with standing decisions from two or more curators, the share
  where all of them decided the same.

`statuses` picks the items the letter, flag and length-bias figures cover (by default
those an export of accepted and not yet reviewed items would hold); per-type, per-run,
per-curator and agreement figures always cover the whole dataset.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Subquery,
    Text,
    and_,
    case,
    cast,
    distinct,
    exists,
    func,
    literal,
    select,
)
from sqlalchemy.orm import Session

from db.engine import Database
from db.models import (
    Dataset,
    Generation,
    GenerationSource,
    Item,
    ItemStatus,
    QuestionType,
    ReviewAction,
    ReviewEvent,
    Run,
    RunStatus,
)
from vqa_engine.errors import ValidationError
from vqa_engine.quality import DEFAULT_CONFIG, LENGTH_BIAS
from vqa_engine.records import LETTERS
from vqa_engine.review import DECIDABLE

DEFAULT_STATUSES: tuple[ItemStatus, ...] = (ItemStatus.GENERATED, ItemStatus.ACCEPTED)
DECISIONS: tuple[ReviewAction, ...] = (ReviewAction.ACCEPT, ReviewAction.REJECT)
CONTENT_SOURCES: tuple[GenerationSource, ...] = (GenerationSource.MODEL, GenerationSource.EDIT)
SIGNIFICANCE = 0.05
PAGE_SIZE = 2000

_GAMMA_EPSILON = 1e-15
_GAMMA_MAX_ITERATIONS = 10_000
_TINY = 1e-300


# ---------------------------------------------------------------- chi-square


def _lower_gamma_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its power series (good for x < a + 1)."""
    term = total = 1.0 / a
    denominator = a
    for _ in range(_GAMMA_MAX_ITERATIONS):
        denominator += 1.0
        term *= x / denominator
        total += term
        if abs(term) < abs(total) * _GAMMA_EPSILON:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _upper_gamma_fraction(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by its continued fraction (x >= a + 1),
    evaluated with the modified Lentz method."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _GAMMA_MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _GAMMA_EPSILON:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def upper_regularized_gamma(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a), for a > 0 and x >= 0."""
    if a <= 0:
        raise ValueError(f"the gamma shape must be positive, got {a}")
    if x < 0:
        raise ValueError(f"the gamma argument must not be negative, got {x}")
    if x == 0:
        return 1.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _lower_gamma_series(a, x))
    return min(1.0, _upper_gamma_fraction(a, x))


def chi_square_sf(statistic: float, degrees_of_freedom: int) -> float:
    """P(X >= statistic) for X chi-square distributed with the given degrees of freedom."""
    if degrees_of_freedom < 1:
        raise ValueError(
            f"a chi-square test needs at least 1 degree of freedom, got {degrees_of_freedom}"
        )
    if statistic <= 0:
        return 1.0
    return upper_regularized_gamma(degrees_of_freedom / 2.0, statistic / 2.0)


@dataclass(frozen=True)
class LetterTest:
    """Correct letters of the items with one option count, tested against an even spread.

    `statistic`, `degrees_of_freedom` and `p_value` are None when there is nothing to test
    (no item, or fewer than two options).
    """

    option_count: int
    counts: dict[str, int]  # every letter of the option count, in order, zero included
    statistic: float | None
    degrees_of_freedom: int | None
    p_value: float | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def uneven(self) -> bool:
        return self.p_value is not None and self.p_value < SIGNIFICANCE


def letter_test(option_count: int, counts: Mapping[str, int]) -> LetterTest:
    """Pearson's chi-square of the correct letters against every letter equally likely."""
    letters = LETTERS[: max(option_count, 0)]
    observed = {letter: int(counts.get(letter, 0)) for letter in letters}
    total = sum(observed.values())
    if option_count < 2 or total == 0:
        return LetterTest(option_count, observed, None, None, None)
    expected = total / option_count
    statistic = sum((count - expected) ** 2 / expected for count in observed.values())
    degrees = option_count - 1
    return LetterTest(option_count, observed, statistic, degrees, chi_square_sf(statistic, degrees))


def format_p_value(p_value: float) -> str:
    if p_value < 0.001:
        return "p < 0.001"
    if p_value < 0.01:
        return f"p = {p_value:.3f}"
    return f"p = {p_value:.2f}"


def letter_reading(test: LetterTest) -> str:
    """One sentence a curator can act on."""
    if test.total == 0:
        return f"No multiple-choice item with {test.option_count} options."
    if test.p_value is None:
        return f"{test.total} item(s) with {test.option_count} option(s): nothing to compare."
    p = format_p_value(test.p_value)
    if test.uneven:
        return (f"{p}: letters are not evenly spread — use Balance letters on the Export page "
                "(or `python -m vqa_engine balance`)")
    return f"{p}: consistent with evenly spread letters"


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class TypeStats:
    question_type: QuestionType
    items: int
    pending: int  # pending or generating
    generated: int  # generated, not yet decided
    failed: int
    accepted: int
    rejected: int
    flagged: int  # current generation carries at least one flag


@dataclass(frozen=True)
class RunStats:
    run_id: int
    status: RunStatus
    model: str | None
    items: int  # items the run was asked to generate
    generated: int
    failed: int
    requests: int
    mean_latency_ms: float | None  # over the run's successful generations
    generations: int  # successful generations of the run
    flagged: int  # of those, the ones carrying at least one flag

    @property
    def flagged_share(self) -> float | None:
        return self.flagged / self.generations if self.generations else None


@dataclass(frozen=True)
class CuratorDecisions:
    curator: str
    accepted: int
    rejected: int

    @property
    def decided(self) -> int:
        return self.accepted + self.rejected


@dataclass(frozen=True)
class Agreement:
    reviews_required: int
    reviewable: int  # generated, accepted or rejected items
    double_reviewed: int  # items with standing decisions from two or more curators
    agreeing: int  # of those, the ones where every curator decided the same
    fully_reviewed: int  # items with standing decisions from `reviews_required` curators
    needs_reviews: int  # reviewable items with fewer

    @property
    def rate(self) -> float | None:
        return self.agreeing / self.double_reviewed if self.double_reviewed else None


@dataclass(frozen=True)
class DatasetHealth:
    dataset_id: int
    statuses: tuple[ItemStatus, ...]
    items: int  # the whole dataset
    letters: tuple[LetterTest, ...]  # by option count, ascending
    multiple_choice: int  # covered multiple-choice items with a correct letter
    covered: int  # items in `statuses` (the coverage of letters, flags and length bias)
    flagged: int  # covered items carrying at least one flag
    flag_counts: dict[str, int]  # covered items per flag, most frequent first
    length_bias_items: int
    length_bias_chance: float | None
    types: tuple[TypeStats, ...]
    runs: tuple[RunStats, ...]  # newest first
    curators: tuple[CuratorDecisions, ...]  # most decisions first
    agreement: Agreement

    @property
    def length_bias_rate(self) -> float | None:
        return self.length_bias_items / self.multiple_choice if self.multiple_choice else None

    @property
    def uneven_letters(self) -> tuple[LetterTest, ...]:
        return tuple(test for test in self.letters if test.uneven)


# ---------------------------------------------------------------- queries


def _dataset(session: Session, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise ValidationError(
            f"dataset {dataset_id} does not exist; pick one in the sidebar or from "
            "`python -m vqa_engine datasets`"
        )
    return dataset


def _set_flags(flags: Any) -> list[str]:
    if not isinstance(flags, Mapping):
        return []
    return [name for name, value in flags.items() if value not in (None, False, "")]


def _has_flag_text() -> ColumnElement[bool]:
    # Most generations carry no flag: the text comparison skips them before any JSON is read.
    return and_(
        Generation.quality_flags.is_not(None),
        cast(Generation.quality_flags, Text).not_in(["{}", "null"]),
    )


def _option_count(session: Session) -> ScalarSelect[int]:
    """The number of keys of `Generation.options`, as a correlated scalar subquery."""
    keys = "json_each" if session.get_bind().dialect.name == "sqlite" else "json_object_keys"
    return (
        select(func.count())
        .select_from(getattr(func, keys)(Generation.options).table_valued("value"))
        .scalar_subquery()
    )


def _letter_tests(
    session: Session, dataset_id: int, statuses: tuple[ItemStatus, ...]
) -> tuple[tuple[LetterTest, ...], int]:
    placed = (
        select(
            _option_count(session).label("option_count"),
            Generation.correct_letter.label("letter"),
        )
        .select_from(Item)
        .join(Generation, Generation.id == Item.current_generation_id)
        .where(
            Item.dataset_id == dataset_id,
            Item.question_type == QuestionType.MULTIPLE_CHOICE,
            Item.status.in_(statuses),
            Generation.ok.is_(True),
            Generation.correct_letter.is_not(None),
        )
        .subquery()
    )
    rows = session.execute(
        select(placed.c.option_count, placed.c.letter, func.count())
        .group_by(placed.c.option_count, placed.c.letter)
    ).all()
    by_count: dict[int, dict[str, int]] = {}
    items = 0
    for option_count, letter, count in rows:
        by_count.setdefault(int(option_count or 0), {})[letter] = int(count)
        items += int(count)
    tests = tuple(letter_test(k, counts) for k, counts in sorted(by_count.items()))
    return tests, items


def _flag_scan(
    session: Session, dataset_id: int, statuses: tuple[ItemStatus, ...]
) -> tuple[Counter[str], int, int, Counter[QuestionType]]:
    """(covered items per flag, covered flagged items, covered MC items with length bias,
    flagged items per question type over the whole dataset), read a page of rows at a time."""
    per_flag: Counter[str] = Counter()
    per_type: Counter[QuestionType] = Counter()
    flagged = length_bias = 0
    wanted = set(statuses)
    rows = session.execute(
        select(Item.status, Item.question_type, Generation.quality_flags)
        .join(Generation, Generation.id == Item.current_generation_id)
        .where(Item.dataset_id == dataset_id, _has_flag_text())
        .execution_options(yield_per=PAGE_SIZE)
    )
    for status, question_type, flags in rows:
        names = _set_flags(flags)
        if not names:
            continue
        per_type[question_type] += 1
        if status not in wanted:
            continue
        flagged += 1
        per_flag.update(names)
        if question_type is QuestionType.MULTIPLE_CHOICE and LENGTH_BIAS in names:
            length_bias += 1
    return per_flag, flagged, length_bias, per_type


def _type_stats(
    session: Session, dataset_id: int, flagged: Mapping[QuestionType, int]
) -> tuple[TypeStats, ...]:
    counts: dict[QuestionType, Counter[ItemStatus]] = {}
    for question_type, status, count in session.execute(
        select(Item.question_type, Item.status, func.count())
        .where(Item.dataset_id == dataset_id)
        .group_by(Item.question_type, Item.status)
    ):
        counts.setdefault(question_type, Counter())[status] = int(count)
    return tuple(
        TypeStats(
            question_type=question_type,
            items=sum(by_status.values()),
            pending=by_status[ItemStatus.PENDING] + by_status[ItemStatus.GENERATING],
            generated=by_status[ItemStatus.GENERATED],
            failed=by_status[ItemStatus.FAILED],
            accepted=by_status[ItemStatus.ACCEPTED],
            rejected=by_status[ItemStatus.REJECTED],
            flagged=flagged.get(question_type, 0),
        )
        for question_type in QuestionType
        if (by_status := counts.get(question_type))
    )


def _run_model(config: Mapping[str, Any] | None) -> str | None:
    config = dict(config or {})
    endpoint = config.get("endpoint")
    model = config.get("model") or (endpoint.get("model") if isinstance(endpoint, dict) else None)
    return model if isinstance(model, str) else None


def _run_stats(session: Session, dataset_id: int) -> tuple[RunStats, ...]:
    runs = session.execute(
        select(Run.id, Run.status, Run.config, Run.total_items, Run.generated_items,
               Run.failed_items, Run.requests)
        .where(Run.dataset_id == dataset_id)
        .order_by(Run.id.desc())
    ).all()
    if not runs:
        return ()
    run_ids = [row[0] for row in runs]
    generations = {
        run_id: (int(count), latency)
        for run_id, count, latency in session.execute(
            select(Generation.run_id, func.count(), func.avg(Generation.latency_ms))
            .where(Generation.run_id.in_(run_ids), Generation.ok.is_(True))
            .group_by(Generation.run_id)
        )
    }
    flagged: Counter[int] = Counter(
        run_id
        for run_id, flags in session.execute(
            select(Generation.run_id, Generation.quality_flags)
            .where(Generation.run_id.in_(run_ids), Generation.ok.is_(True), _has_flag_text())
            .execution_options(yield_per=PAGE_SIZE)
        )
        if _set_flags(flags)
    )
    result = []
    for run_id, status, config, total, generated, failed, requests in runs:
        count, latency = generations.get(run_id, (0, None))
        result.append(RunStats(
            run_id=run_id, status=status, model=_run_model(config), items=int(total or 0),
            generated=int(generated or 0), failed=int(failed or 0), requests=int(requests or 0),
            mean_latency_ms=float(latency) if latency is not None else None,
            generations=count, flagged=flagged[run_id],
        ))
    return tuple(result)


def standing_event() -> ColumnElement[bool]:
    """True for a review event that is a decision still standing (see `standing_decisions`)."""
    content_changed_since = exists().where(
        Generation.item_id == ReviewEvent.item_id,
        Generation.ok.is_(True),
        Generation.source.in_(CONTENT_SOURCES),
        Generation.created_at > ReviewEvent.created_at,
    )
    return and_(
        ReviewEvent.action.in_(DECISIONS),
        ReviewEvent.undone_by.is_(None),
        ~content_changed_since,
    )


def standing_decisions(dataset_id: int) -> Subquery:
    """Subquery (item_id, curator, action): each curator's latest standing decision per item.

    A decision stands while it is not undone and no model generation or edit came after
    it (a reshuffle keeps the texts, so it keeps decisions). Team review hands out items
    by the same rule (`standing_event`).
    """
    latest = (
        select(func.max(ReviewEvent.id).label("event_id"))
        .join(Item, Item.id == ReviewEvent.item_id)
        .where(
            Item.dataset_id == dataset_id,
            Item.status.in_(tuple(DECIDABLE)),
            standing_event(),
        )
        .group_by(ReviewEvent.item_id, ReviewEvent.curator)
        .subquery()
    )
    return (
        select(ReviewEvent.item_id, ReviewEvent.curator, ReviewEvent.action)
        .join(latest, latest.c.event_id == ReviewEvent.id)
        .subquery()
    )


def curator_decisions(session: Session, dataset_id: int) -> tuple[CuratorDecisions, ...]:
    standing = standing_decisions(dataset_id)
    counts: dict[str, Counter[ReviewAction]] = {}
    for curator, action, count in session.execute(
        select(standing.c.curator, standing.c.action, func.count())
        .group_by(standing.c.curator, standing.c.action)
    ):
        counts.setdefault(curator, Counter())[ReviewAction(action)] = int(count)
    curators = [
        CuratorDecisions(name, by_action[ReviewAction.ACCEPT], by_action[ReviewAction.REJECT])
        for name, by_action in counts.items()
    ]
    return tuple(sorted(curators, key=lambda c: (-c.decided, c.curator)))


def agreement_in_session(session: Session, dataset: Dataset) -> Agreement:
    required = max(int(dataset.reviews_required or 1), 1)
    standing = standing_decisions(dataset.id)
    per_item = (
        select(
            standing.c.item_id,
            func.count().label("curators"),
            func.count(distinct(standing.c.action)).label("actions"),
        )
        .group_by(standing.c.item_id)
        .subquery()
    )
    double, agreeing, full = session.execute(
        select(
            func.coalesce(func.sum(case((per_item.c.curators >= 2, 1), else_=0)), 0),
            func.coalesce(func.sum(
                case((and_(per_item.c.curators >= 2, per_item.c.actions == 1), 1), else_=0)
            ), 0),
            func.coalesce(func.sum(case((per_item.c.curators >= literal(required), 1), else_=0)), 0),
        )
    ).one()
    reviewable = session.scalar(
        select(func.count()).select_from(Item)
        .where(Item.dataset_id == dataset.id, Item.status.in_(tuple(DECIDABLE)))
    ) or 0
    return Agreement(
        reviews_required=required,
        reviewable=int(reviewable),
        double_reviewed=int(double),
        agreeing=int(agreeing),
        fully_reviewed=int(full),
        needs_reviews=int(reviewable) - int(full),
    )


def agreement(database: Database, dataset_id: int) -> Agreement:
    """How often curators who decided the same item agree, and how many items still wait."""
    with database.read() as session:
        return agreement_in_session(session, _dataset(session, dataset_id))


def dataset_health(
    database: Database,
    dataset_id: int,
    *,
    statuses: Iterable[ItemStatus] = DEFAULT_STATUSES,
) -> DatasetHealth:
    """Every health figure of one dataset, read in one transaction."""
    wanted = tuple(ItemStatus(status) for status in statuses)
    with database.read() as session:
        dataset = _dataset(session, dataset_id)
        letters, multiple_choice = _letter_tests(session, dataset_id, wanted)
        per_flag, flagged, length_bias, flagged_by_type = _flag_scan(session, dataset_id, wanted)
        types = _type_stats(session, dataset_id, flagged_by_type)
        covered = session.scalar(
            select(func.count()).select_from(Item)
            .where(Item.dataset_id == dataset_id, Item.status.in_(wanted))
        ) or 0
        runs = _run_stats(session, dataset_id)
        curators = curator_decisions(session, dataset_id)
        agreed = agreement_in_session(session, dataset)
    minimum = DEFAULT_CONFIG.length_bias_min_options
    chance = sum(test.total / test.option_count for test in letters if test.option_count >= minimum)
    return DatasetHealth(
        dataset_id=dataset_id,
        statuses=wanted,
        items=sum(t.items for t in types),
        letters=letters,
        multiple_choice=multiple_choice,
        covered=int(covered),
        flagged=flagged,
        flag_counts=dict(sorted(per_flag.items(), key=lambda entry: (-entry[1], entry[0]))),
        length_bias_items=length_bias,
        length_bias_chance=chance / multiple_choice if multiple_choice else None,
        types=types,
        runs=runs,
        curators=curators,
        agreement=agreed,
    )
