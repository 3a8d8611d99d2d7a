"""Dataset health figures on a real SQLite dataset whose every figure is known in advance."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from db.engine import Database
from db.models import (
    Dataset,
    Generation,
    Item,
    ItemStatus,
    QuestionType,
    ReviewAction,
    ReviewEvent,
    RunStatus,
    utcnow,
)
from tests.curated_rows import add_dataset, add_image, add_item, add_run
from vqa_engine import health
from vqa_engine.errors import ValidationError
from vqa_engine.health import (
    agreement,
    chi_square_sf,
    dataset_health,
    format_p_value,
    letter_reading,
    letter_test,
    upper_regularized_gamma,
)

FOUR = ("dog", "cat", "horse", "cow")
THREE = ("dog", "cat", "horse")
LB = {"length_bias": {"reason": "the correct option A is the only longest"}}


# ---------------------------------------------------------------- chi-square


@pytest.mark.parametrize(
    ("statistic", "df", "expected"),
    [
        (3.841459, 1, 0.05),
        (11.344867, 3, 0.01),
        (2.705543, 1, 0.10),
        (6.634897, 1, 0.01),
        (18.307038, 10, 0.05),
        (50.892181, 30, 0.01),
        (124.342113, 100, 0.05),
        (0.015791, 1, 0.90),
        (0.584375, 3, 0.90),
    ],
)
def test_chi_square_survival_matches_published_quantiles(statistic: float, df: int,
                                                        expected: float) -> None:
    assert chi_square_sf(statistic, df) == pytest.approx(expected, rel=1e-4)


def test_chi_square_survival_has_closed_forms_for_two_degrees_and_zero() -> None:
    for x in (0.5, 1.0, 4.0, 30.0):
        assert chi_square_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12)
    assert chi_square_sf(0.0, 3) == 1.0
    assert chi_square_sf(-1.0, 3) == 1.0
    assert chi_square_sf(10_000.0, 3) == 0.0
    assert upper_regularized_gamma(1.0, 2.0) == pytest.approx(math.exp(-2.0), rel=1e-12)


def test_chi_square_survival_refuses_zero_degrees_of_freedom() -> None:
    with pytest.raises(ValueError, match="at least 1 degree"):
        chi_square_sf(1.0, 0)


def test_letter_test_with_no_item_or_one_option_has_no_p_value() -> None:
    empty = letter_test(4, {})
    assert empty.counts == {"A": 0, "B": 0, "C": 0, "D": 0}
    assert (empty.total, empty.statistic, empty.p_value, empty.uneven) == (0, None, None, False)
    assert letter_reading(empty) == "No multiple-choice item with 4 options."
    single = letter_test(1, {"A": 5})
    assert (single.total, single.degrees_of_freedom, single.p_value) == (5, None, None)


def test_letter_test_all_on_one_letter_is_uneven_and_even_spread_is_not() -> None:
    skewed = letter_test(3, {"A": 30})
    assert skewed.statistic == pytest.approx(60.0)  # N (k - 1)
    assert skewed.degrees_of_freedom == 2
    assert skewed.p_value == pytest.approx(math.exp(-30.0), rel=1e-9)
    assert skewed.uneven
    assert letter_reading(skewed).startswith("p < 0.001: letters are not evenly spread")
    even = letter_test(3, {"A": 4, "B": 4, "C": 4})
    assert (even.statistic, even.p_value, even.uneven) == (0.0, 1.0, False)
    assert letter_reading(even) == "p = 1.00: consistent with evenly spread letters"


def test_p_values_are_written_with_useful_precision() -> None:
    assert format_p_value(0.0031) == "p = 0.003"
    assert format_p_value(0.2468) == "p = 0.25"
    assert format_p_value(0.0004) == "p < 0.001"


# ---------------------------------------------------------------- a known dataset


def _options(texts: tuple[str, ...]) -> dict[str, str]:
    return dict(zip("ABCDE", texts))


def _event(session, item: Item, curator: str, action: ReviewAction, *, at=None) -> ReviewEvent:
    event = ReviewEvent(item_id=item.id, curator=curator, action=action,
                        created_at=at or utcnow())
    session.add(event)
    session.flush()
    return event


def build_known_dataset(database: Database, data_dir: Path) -> dict[str, int]:
    """Letters, flags, runs and decisions whose every figure the tests below spell out."""
    with database.write() as session:
        image = add_image(session, data_dir)
        dataset = add_dataset(session, "known")
        run1 = add_run(session, dataset, status=RunStatus.COMPLETED, config={"model": "model-a"},
                       total_items=5, generated_items=4, failed_items=1, requests=9)
        run2 = add_run(session, dataset, status=RunStatus.RUNNING,
                       config={"endpoint": {"model": "model-b"}}, total_items=3,
                       generated_items=3, requests=6)
        items: dict[str, Item] = {}

        def mc(name: str, letter: str, texts: tuple[str, ...], status=ItemStatus.GENERATED,
               flags=None, run=None, latency=None) -> None:
            options = _options(texts)
            item = add_item(session, dataset, image, external_id=name, status=status,
                            answer=options[letter], options=options, correct_letter=letter,
                            flags=flags, run=run)
            session.get_one(Generation, item.current_generation_id).latency_ms = latency
            items[name] = item

        # Four options: A six times, B twice (one accepted pair carries length bias).
        mc("m1", "A", FOUR, ItemStatus.ACCEPTED,
           {**LB, "duplicate_options": {"reason": "x"}}, run1, 100.0)
        mc("m2", "A", FOUR, ItemStatus.ACCEPTED, LB, run1, 200.0)
        mc("m3", "A", FOUR, run=run1, latency=300.0)
        mc("m4", "A", FOUR, flags={"duplicate_options": False}, run=run1, latency=400.0)
        mc("m5", "A", FOUR)
        mc("m6", "A", FOUR)
        mc("m7", "B", FOUR)
        mc("m8", "B", FOUR)
        mc("m9", "D", FOUR, ItemStatus.REJECTED, LB)  # outside the default coverage
        # Three options, one per letter.
        mc("t1", "A", THREE, flags={"blind_answerable": {"reason": "answered without the image"}},
           run=run2, latency=50.0)
        mc("t2", "B", THREE, run=run2, latency=50.0)
        mc("t3", "C", THREE, run=run2, latency=50.0)
        for name, status, flags in (("f1", ItemStatus.GENERATED, {"refusal": {"reason": "r"}}),
                                    ("f2", ItemStatus.GENERATED, None),
                                    ("f3", ItemStatus.FAILED, None),
                                    ("f4", ItemStatus.PENDING, None)):
            items[name] = add_item(session, dataset, image, external_id=name, status=status,
                                   question_type=QuestionType.FILL_IN_BLANK, flags=flags,
                                   run=run1 if status is ItemStatus.FAILED else None)

        _event(session, items["m1"], "alice", ReviewAction.ACCEPT)
        _event(session, items["m1"], "bob", ReviewAction.ACCEPT)
        _event(session, items["m2"], "alice", ReviewAction.ACCEPT)
        _event(session, items["m2"], "bob", ReviewAction.REJECT)
        _event(session, items["m9"], "alice", ReviewAction.REJECT)
        _event(session, items["f1"], "alice", ReviewAction.ACCEPT)
        _event(session, items["m3"], "alice", ReviewAction.EDIT)  # not a decision
        # Undone: dave's accept and the undo itself count for nothing.
        undone = _event(session, items["t1"], "dave", ReviewAction.ACCEPT)
        undo = _event(session, items["t1"], "dave", ReviewAction.UNDO)
        undone.undone_by = undo.id
        # Bob changed his mind on t2: only his latest decision stands; carol agrees with it.
        _event(session, items["t2"], "bob", ReviewAction.REJECT)
        _event(session, items["t2"], "bob", ReviewAction.ACCEPT)
        _event(session, items["t2"], "carol", ReviewAction.ACCEPT)
        # Decided before the current content was generated: no longer stands.
        made = session.get_one(Generation, items["t3"].current_generation_id).created_at
        _event(session, items["t3"], "alice", ReviewAction.ACCEPT, at=made - timedelta(minutes=5))

        other = add_dataset(session, "other")
        elsewhere = add_item(session, other, image, external_id="o1", status=ItemStatus.ACCEPTED,
                             flags=LB)
        _event(session, elsewhere, "alice", ReviewAction.ACCEPT)
        _event(session, elsewhere, "bob", ReviewAction.REJECT)
        return {"dataset": dataset.id, "run1": run1.id, "run2": run2.id, "other": other.id}


@pytest.fixture
def known(database: Database, data_dir: Path) -> dict[str, int]:
    return build_known_dataset(database, data_dir)


def test_letters_per_option_count_with_chi_square(database: Database, known) -> None:
    report = dataset_health(database, known["dataset"])
    three, four = report.letters
    assert (three.option_count, three.counts) == (3, {"A": 1, "B": 1, "C": 1})
    assert (three.statistic, three.p_value) == (0.0, 1.0)
    assert (four.option_count, four.counts) == (4, {"A": 6, "B": 2, "C": 0, "D": 0})
    assert four.statistic == pytest.approx(12.0)  # expected 2 each: (16 + 0 + 4 + 4) / 2
    assert four.degrees_of_freedom == 3
    assert four.p_value == pytest.approx(0.0073832, rel=1e-4)
    assert report.uneven_letters == (four,)
    assert report.multiple_choice == 11
    assert report.covered == 13
    assert report.items == 16


def test_statuses_choose_the_items_letters_and_flags_cover(database: Database, known) -> None:
    everything = (ItemStatus.GENERATED, ItemStatus.ACCEPTED, ItemStatus.REJECTED)
    report = dataset_health(database, known["dataset"], statuses=everything)
    four = report.letters[1]
    assert four.counts == {"A": 6, "B": 2, "C": 0, "D": 1}
    assert four.statistic == pytest.approx(20.75 / 2.25)
    assert report.flag_counts["length_bias"] == 3
    assert report.length_bias_items == 3
    assert report.multiple_choice == 12
    none = dataset_health(database, known["dataset"], statuses=())
    assert (none.letters, none.multiple_choice, none.flag_counts, none.covered) == ((), 0, {}, 0)
    assert none.length_bias_rate is None and none.length_bias_chance is None


def test_flag_counts_and_length_bias_rate(database: Database, known) -> None:
    report = dataset_health(database, known["dataset"])
    assert report.flag_counts == {
        "length_bias": 2, "blind_answerable": 1, "duplicate_options": 1, "refusal": 1,
    }
    assert list(report.flag_counts)[0] == "length_bias"
    assert report.flagged == 4  # m1, m2, t1, f1: a false flag value is no flag
    assert report.length_bias_items == 2
    assert report.length_bias_rate == pytest.approx(2 / 11)
    assert report.length_bias_chance == pytest.approx((3 / 3 + 8 / 4) / 11)


def test_flag_scan_reads_pages_without_losing_rows(database: Database, known,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    whole = dataset_health(database, known["dataset"])
    monkeypatch.setattr(health, "PAGE_SIZE", 1)
    paged = dataset_health(database, known["dataset"])
    assert paged == whole


def test_per_question_type_stats(database: Database, known) -> None:
    report = dataset_health(database, known["dataset"])
    by_type = {t.question_type: t for t in report.types}
    mc = by_type[QuestionType.MULTIPLE_CHOICE]
    assert (mc.items, mc.pending, mc.generated, mc.failed, mc.accepted, mc.rejected, mc.flagged) \
        == (12, 0, 9, 0, 2, 1, 4)
    fib = by_type[QuestionType.FILL_IN_BLANK]
    assert (fib.items, fib.pending, fib.generated, fib.failed, fib.accepted, fib.rejected,
            fib.flagged) == (4, 1, 2, 1, 0, 0, 1)


def test_per_run_stats(database: Database, known) -> None:
    report = dataset_health(database, known["dataset"])
    run2, run1 = report.runs  # newest first
    assert (run1.run_id, run1.model, run1.status) == (known["run1"], "model-a", RunStatus.COMPLETED)
    assert (run1.items, run1.generated, run1.failed, run1.requests) == (5, 4, 1, 9)
    assert run1.mean_latency_ms == pytest.approx(250.0)  # the failed generation has none
    assert (run1.generations, run1.flagged, run1.flagged_share) == (4, 2, 0.5)
    assert (run2.run_id, run2.model, run2.items, run2.requests) == (known["run2"], "model-b", 3, 6)
    assert run2.mean_latency_ms == pytest.approx(50.0)
    assert run2.flagged_share == pytest.approx(1 / 3)


def test_per_curator_counts_only_standing_decisions(database: Database, known) -> None:
    report = dataset_health(database, known["dataset"])
    assert [(c.curator, c.accepted, c.rejected) for c in report.curators] == [
        ("alice", 3, 1),  # m1, m2, f1 accepted; m9 rejected; t3 predates its content
        ("bob", 2, 1),  # m1 and t2 (his latest) accepted; m2 rejected
        ("carol", 1, 0),
    ]  # dave's only decision was undone


def test_agreement_with_curators_agreeing_and_disagreeing(database: Database, known) -> None:
    result = agreement(database, known["dataset"])
    assert result.double_reviewed == 3  # m1 and t2 agree, m2 does not
    assert result.agreeing == 2
    assert result.rate == pytest.approx(2 / 3)
    assert result.reviews_required == 1
    assert result.reviewable == 14  # 12 multiple-choice + 2 generated fill-in-blank
    assert (result.fully_reviewed, result.needs_reviews) == (5, 9)  # m1 m2 m9 t2 f1
    assert dataset_health(database, known["dataset"]).agreement == result


def test_agreement_counts_items_short_of_the_required_reviews(database: Database, known) -> None:
    with database.write() as session:
        session.execute(update(Dataset).where(Dataset.id == known["dataset"])
                        .values(reviews_required=2))
    result = agreement(database, known["dataset"])
    assert result.reviews_required == 2
    assert (result.fully_reviewed, result.needs_reviews) == (3, 11)


def test_undoing_a_disagreeing_decision_makes_the_item_single_reviewed(
    database: Database, known
) -> None:
    with database.write() as session:
        item = session.scalars(select(Item).where(Item.dataset_id == known["dataset"],
                                                  Item.external_id == "m2")).one()
        undo = _event(session, item, "bob", ReviewAction.UNDO)
        item_id = item.id
        session.execute(
            update(ReviewEvent)
            .where(ReviewEvent.item_id == item_id, ReviewEvent.curator == "bob",
                   ReviewEvent.action == ReviewAction.REJECT)
            .values(undone_by=undo.id)
        )
    result = agreement(database, known["dataset"])
    assert (result.double_reviewed, result.agreeing, result.rate) == (2, 2, 1.0)


def test_empty_dataset_has_empty_figures(database: Database, data_dir: Path) -> None:
    with database.write() as session:
        dataset_id = add_dataset(session, "empty").id
    report = dataset_health(database, dataset_id)
    assert (report.items, report.letters, report.flag_counts, report.types, report.runs,
            report.curators) == (0, (), {}, (), (), ())
    assert report.length_bias_rate is None
    assert report.agreement.rate is None
    assert (report.agreement.double_reviewed, report.agreement.needs_reviews) == (0, 0)


def test_unknown_dataset_is_refused_with_its_id(database: Database) -> None:
    with pytest.raises(ValidationError, match="dataset 999 does not exist"):
        dataset_health(database, 999)
    with pytest.raises(ValidationError, match="dataset 999 does not exist"):
        agreement(database, 999)


def test_same_figures_on_postgresql(postgres_database: Database, data_dir: Path) -> None:
    known = build_known_dataset(postgres_database, data_dir)
    report = dataset_health(postgres_database, known["dataset"])
    assert [t.counts for t in report.letters] == [
        {"A": 1, "B": 1, "C": 1}, {"A": 6, "B": 2, "C": 0, "D": 0},
    ]
    assert report.flag_counts["length_bias"] == 2
    assert [(c.curator, c.accepted, c.rejected) for c in report.curators] == [
        ("alice", 3, 1), ("bob", 2, 1), ("carol", 1, 0),
    ]
    assert (report.agreement.double_reviewed, report.agreement.agreeing) == (3, 2)
    assert report.runs[1].mean_latency_ms == pytest.approx(250.0)
