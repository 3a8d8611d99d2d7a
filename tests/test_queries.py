"""Dashboard read queries: filters, pages, keyset navigation and aggregates, on real databases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from curated_rows import add_dataset, add_image, add_item, add_run
from db.engine import Database
from db.models import ItemStatus, QuestionType, ReviewAction, ReviewEvent, RunStatus
from db.queries import (
    ANY_FLAG,
    ItemFilter,
    ItemOrder,
    count_items,
    dataset_overview,
    flag_names,
    item_detail,
    letter_histogram,
    list_items,
    neighbours,
    recent_runs,
    status_counts,
)

@dataclass(frozen=True)
class Sample:
    dataset_id: int
    other_dataset_id: int
    run_id: int
    ids: dict[str, int]


def build_sample(database: Database, data_dir: Path) -> Sample:
    with database.write() as session:
        dataset = add_dataset(session, "animals")
        other = add_dataset(session, "plants")
        image = add_image(session, data_dir)
        run = add_run(session, dataset, status=RunStatus.COMPLETED,
                      config={"endpoint": {"model": "qwen-vl"}})
        ids: dict[str, int] = {}
        specs = [
            ("q1", ItemStatus.ACCEPTED, QuestionType.MULTIPLE_CHOICE, "cat", "B", {}),
            ("q2", ItemStatus.GENERATED, QuestionType.MULTIPLE_CHOICE, "zebra", "A",
             {"answer_in_question": True}),
            ("q3", ItemStatus.GENERATED, QuestionType.FILL_IN_BLANK, "3", None, {}),
            ("q4", ItemStatus.PENDING, QuestionType.MULTIPLE_CHOICE, None, None, {}),
            ("q5", ItemStatus.FAILED, QuestionType.MULTIPLE_CHOICE, None, None, {}),
            ("q6", ItemStatus.REJECTED, QuestionType.MULTIPLE_CHOICE, "50% off", "C",
             {"short_distractors": "2 of 3 options are one word", "answer_in_question": False}),
            ("q7", ItemStatus.GENERATED, QuestionType.MULTIPLE_CHOICE, "lion", "A", {}),
        ]
        for position, (external_id, status, qtype, answer, letter, flags) in enumerate(specs):
            options = None
            if qtype is QuestionType.MULTIPLE_CHOICE and answer:
                others = iter(["dog", "horse"])
                options = {x: answer if x == letter else next(others) for x in "ABC"}
            item = add_item(
                session, dataset, image, external_id=external_id, status=status,
                question_type=qtype, answer=answer, options=options, correct_letter=letter,
                flags=flags, run=run if external_id != "q7" else None, position=position,
                question=f"Question {external_id}: what is in the picture?",
            )
            ids[external_id] = item.id
        add_item(session, other, image, external_id="p1", status=ItemStatus.ACCEPTED)
        return Sample(dataset.id, other.id, run.id, ids)


@pytest.fixture
def sample(database: Database, data_dir: Path) -> Sample:
    return build_sample(database, data_dir)


def external_ids(database: Database, item_filter: ItemFilter, **kwargs: object) -> list[str]:
    with database.read() as session:
        return [row.external_id for row in list_items(session, item_filter, **kwargs)]


def test_list_items_returns_the_dataset_in_source_order(database: Database, sample: Sample) -> None:
    assert external_ids(database, ItemFilter(dataset_id=sample.dataset_id)) == [
        "q1", "q2", "q3", "q4", "q5", "q6", "q7"]


def test_list_items_filters_by_status_type_and_run(database: Database, sample: Sample) -> None:
    generated = ItemFilter(dataset_id=sample.dataset_id, statuses=(ItemStatus.GENERATED,))
    assert external_ids(database, generated) == ["q2", "q3", "q7"]
    blanks = ItemFilter(dataset_id=sample.dataset_id,
                        question_types=(QuestionType.FILL_IN_BLANK,))
    assert external_ids(database, blanks) == ["q3"]
    in_run = ItemFilter(dataset_id=sample.dataset_id, run_id=sample.run_id,
                        statuses=(ItemStatus.GENERATED, ItemStatus.ACCEPTED))
    assert external_ids(database, in_run) == ["q1", "q2", "q3"]


def test_flag_filter_matches_only_truthy_flags(database: Database, sample: Sample) -> None:
    flagged = ItemFilter(dataset_id=sample.dataset_id, flag="answer_in_question")
    assert external_ids(database, flagged) == ["q2"]
    any_flag = ItemFilter(dataset_id=sample.dataset_id, flag=ANY_FLAG)
    assert external_ids(database, any_flag) == ["q2", "q6"]
    with database.read() as session:
        assert flag_names(session, sample.dataset_id) == ["answer_in_question",
                                                          "short_distractors"]


def test_text_search_covers_question_answer_and_id_and_treats_wildcards_literally(
    database: Database, sample: Sample,
) -> None:
    assert external_ids(database, ItemFilter(dataset_id=sample.dataset_id, text="ZEBRA")) == ["q2"]
    assert external_ids(database, ItemFilter(dataset_id=sample.dataset_id, text="q5:")) == ["q5"]
    assert external_ids(database, ItemFilter(dataset_id=sample.dataset_id, text="50%")) == ["q6"]
    assert external_ids(database, ItemFilter(dataset_id=sample.dataset_id, text="%")) == ["q6"]
    assert external_ids(database, ItemFilter(dataset_id=sample.dataset_id, text="q_")) == []


def test_rows_carry_the_table_columns(database: Database, sample: Sample) -> None:
    with database.read() as session:
        rows = list_items(session, ItemFilter(dataset_id=sample.dataset_id, text="zebra"))
    (row,) = rows
    assert (row.id, row.status, row.question_type) == (
        sample.ids["q2"], ItemStatus.GENERATED, QuestionType.MULTIPLE_CHOICE)
    assert (row.correct_letter, row.answer, row.flags) == ("A", "zebra", ("answer_in_question",))
    assert row.question.startswith("Question q2") and row.version >= 1
    assert row.generation_id is not None


def test_long_questions_are_cut_to_a_snippet(database: Database, data_dir: Path) -> None:
    with database.write() as session:
        dataset = add_dataset(session)
        image = add_image(session, data_dir)
        add_item(session, dataset, image, external_id="long", question="word " * 200)
        dataset_id = dataset.id
    with database.read() as session:
        (row,) = list_items(session, ItemFilter(dataset_id=dataset_id))
    assert len(row.question) <= 160 and row.question.endswith("…")


def test_pages_and_count_agree(database: Database, sample: Sample) -> None:
    everything = ItemFilter(dataset_id=sample.dataset_id)
    pages = [external_ids(database, everything, offset=offset, limit=3) for offset in (0, 3, 6)]
    assert pages == [["q1", "q2", "q3"], ["q4", "q5", "q6"], ["q7"]]
    with database.read() as session:
        assert count_items(session, everything) == 7
        assert count_items(session, ItemFilter(dataset_id=sample.dataset_id, text="zebra")) == 1
        assert count_items(session, ItemFilter(dataset_id=sample.dataset_id,
                                               flag=ANY_FLAG)) == 2
        assert count_items(session, everything, cap=5) == 5
        assert count_items(session, everything, cap=50) == 7


def test_neighbours_walk_the_filter_and_stop_at_the_ends(database: Database,
                                                          sample: Sample) -> None:
    generated = ItemFilter(dataset_id=sample.dataset_id, statuses=(ItemStatus.GENERATED,))
    ids = sample.ids
    with database.read() as session:
        assert neighbours(session, generated, ids["q2"]) == (None, ids["q3"])
        assert neighbours(session, generated, ids["q3"]) == (ids["q2"], ids["q7"])
        assert neighbours(session, generated, ids["q7"]) == (ids["q3"], None)
        # q5 is not generated, yet its place in the order still defines its neighbours.
        assert neighbours(session, generated, ids["q5"]) == (ids["q3"], ids["q7"])


def test_recently_changed_order_puts_the_last_touched_item_first(
    database: Database, sample: Sample,
) -> None:
    from datetime import datetime, timedelta, timezone

    from db.models import Item

    with database.write() as session:
        item = session.get_one(Item, sample.ids["q4"])
        item.updated_at = datetime.now(timezone.utc) + timedelta(minutes=5)
    everything = ItemFilter(dataset_id=sample.dataset_id)
    assert external_ids(database, everything, order=ItemOrder.RECENTLY_CHANGED)[0] == "q4"
    with database.read() as session:
        previous, following = neighbours(session, everything, sample.ids["q4"],
                                         order=ItemOrder.RECENTLY_CHANGED)
    assert previous is None and following is not None


def test_status_counts_list_every_status(database: Database, sample: Sample) -> None:
    with database.read() as session:
        counts = status_counts(session, sample.dataset_id)
    assert counts == {
        ItemStatus.PENDING: 1, ItemStatus.GENERATING: 0, ItemStatus.GENERATED: 3,
        ItemStatus.FAILED: 1, ItemStatus.ACCEPTED: 1, ItemStatus.REJECTED: 1,
    }


def test_letter_histogram_counts_correct_letters_of_multiple_choice_items(
    database: Database, sample: Sample,
) -> None:
    with database.read() as session:
        assert letter_histogram(session, sample.dataset_id) == {"A": 2, "B": 1, "C": 1}
        assert letter_histogram(session, sample.dataset_id,
                                [ItemStatus.ACCEPTED, ItemStatus.GENERATED]) == {"A": 2, "B": 1}
        assert letter_histogram(session, sample.dataset_id, []) == {}


def test_dataset_overview_counts_items_and_names_the_last_run(
    database: Database, sample: Sample,
) -> None:
    with database.write() as session:
        from db.models import Dataset

        newer = add_run(session, session.get_one(Dataset, sample.dataset_id),
                        status=RunStatus.RUNNING, config={"model": "newer-model"})
        newer_id = newer.id
    with database.read() as session:
        overview = {entry.name: entry for entry in dataset_overview(session)}
    animals, plants = overview["animals"], overview["plants"]
    assert animals.total == 7 and animals.needs_review == 3 and animals.failed == 1
    assert animals.counts[ItemStatus.ACCEPTED] == 1
    assert animals.last_run is not None and animals.last_run.id == newer_id
    assert animals.last_run.model == "newer-model"
    assert plants.total == 1 and plants.last_run is None


def test_recent_runs_are_newest_first_with_dataset_names(database: Database,
                                                         sample: Sample) -> None:
    with database.write() as session:
        from db.models import Dataset

        add_run(session, session.get_one(Dataset, sample.other_dataset_id))
    with database.read() as session:
        runs = recent_runs(session, 5)
        only_animals = recent_runs(session, 5, dataset_id=sample.dataset_id)
    assert [run.dataset_name for run in runs] == ["plants", "animals"]
    assert [run.id for run in only_animals] == [sample.run_id]
    assert only_animals[0].model == "qwen-vl"


def test_item_detail_gathers_generations_and_events_newest_first(
    database: Database, sample: Sample,
) -> None:
    item_id = sample.ids["q2"]
    with database.write() as session:
        for action in (ReviewAction.REJECT, ReviewAction.ACCEPT):
            session.add(ReviewEvent(item_id=item_id, curator="alice", action=action))
    with database.read() as session:
        detail = item_detail(session, item_id)
        missing = item_detail(session, 987654)
    assert missing is None
    assert detail is not None
    assert detail.item.external_id == "q2" and detail.dataset_name == "animals"
    assert detail.image.original_name == "cat.jpg"
    assert detail.current is not None and detail.current.answer == "zebra"
    assert [g.id for g in detail.generations] == [detail.current.id]
    assert [e.action for e in detail.events] == [ReviewAction.ACCEPT, ReviewAction.REJECT]


def test_item_detail_of_a_pending_item_has_no_generation(database: Database,
                                                         sample: Sample) -> None:
    with database.read() as session:
        detail = item_detail(session, sample.ids["q4"])
    assert detail is not None and detail.current is None and detail.generations == []
    assert detail.item.question.startswith("Question q4")


@pytest.mark.postgres
def test_the_same_queries_work_on_postgresql(postgres_database: Database,
                                             data_dir: Path) -> None:
    sample = build_sample(postgres_database, data_dir)
    database = postgres_database
    assert external_ids(database, ItemFilter(dataset_id=sample.dataset_id,
                                             flag="answer_in_question")) == ["q2"]
    assert external_ids(database, ItemFilter(dataset_id=sample.dataset_id,
                                             flag=ANY_FLAG)) == ["q2", "q6"]
    assert external_ids(database, ItemFilter(dataset_id=sample.dataset_id, text="50%")) == ["q6"]
    generated = ItemFilter(dataset_id=sample.dataset_id, statuses=(ItemStatus.GENERATED,))
    with database.read() as session:
        assert count_items(session, generated) == 3
        assert neighbours(session, generated, sample.ids["q3"]) == (
            sample.ids["q2"], sample.ids["q7"])
        assert status_counts(session, sample.dataset_id)[ItemStatus.GENERATED] == 3
        assert letter_histogram(session, sample.dataset_id) == {"A": 2, "B": 1, "C": 1}
        assert flag_names(session, sample.dataset_id) == ["answer_in_question",
                                                          "short_distractors"]
        assert {entry.name for entry in dataset_overview(session)} == {"animals", "plants"}
        detail = item_detail(session, sample.ids["q2"])
        assert detail is not None and detail.current is not None
