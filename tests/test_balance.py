"""Balanced letters on real SQLite files: even spread, texts kept, deterministic, recorded."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from curated_rows import add_dataset, add_image, add_item
from db.engine import Database, open_database
from db.models import (
    Generation,
    GenerationSource,
    Item,
    ItemStatus,
    QuestionType,
    ReviewAction,
    ReviewEvent,
)
from vqa_engine.balance import balance_letters
from vqa_engine.records import LETTERS, compose_full_question

DISTRACTORS = ["dog", "horse", "cow", "goat", "sheep"]


def options_with(answer: str, count: int, letter: str) -> dict[str, str]:
    others = iter(DISTRACTORS[: count - 1])
    return {k: answer if k == letter else next(others) for k in LETTERS[:count]}


def skewed_dataset(database: Database, data_dir: Path, name: str = "animals") -> int:
    """Letters piled on A and B; 3- and 4-option groups; plus fill-in-blank and pending rows."""
    with database.write() as session:
        dataset = add_dataset(session, name)
        image = add_image(session, data_dir)
        for index in range(11):
            answer = f"cat{index}"
            add_item(session, dataset, image, external_id=f"three-{index}", answer=answer,
                     options=options_with(answer, 3, "A"), correct_letter="A",
                     status=ItemStatus.ACCEPTED if index % 2 else ItemStatus.GENERATED)
        for index in range(9):
            answer = f"bird{index}"
            add_item(session, dataset, image, external_id=f"four-{index}", answer=answer,
                     options=options_with(answer, 4, "B" if index % 3 else "C"),
                     correct_letter="B" if index % 3 else "C")
        add_item(session, dataset, image, external_id="blank", answer="seven",
                 question_type=QuestionType.FILL_IN_BLANK)
        add_item(session, dataset, image, external_id="pending", status=ItemStatus.PENDING)
        return dataset.id


def layout(database: Database, dataset_id: int) -> dict[str, tuple[str | None, dict, str | None]]:
    with database.read() as session:
        rows = session.execute(
            select(Item.external_id, Generation.correct_letter, Generation.options,
                   Generation.answer)
            .join(Generation, Generation.id == Item.current_generation_id)
            .where(Item.dataset_id == dataset_id)
        ).all()
    return {ext: (letter, dict(options or {}), answer) for ext, letter, options, answer in rows}


def assert_within_one(histogram: dict[int, dict[str, int]]) -> None:
    for count, letters in histogram.items():
        assert len(letters) == count
        assert max(letters.values()) - min(letters.values()) <= 1, (count, letters)


def test_balancing_spreads_each_option_count_within_one(database: Database, data_dir: Path):
    dataset_id = skewed_dataset(database, data_dir)
    summary = balance_letters(database, dataset_id, curator="ana", seed=3)
    assert summary.histogram_before == {3: {"A": 11, "B": 0, "C": 0},
                                        4: {"A": 0, "B": 6, "C": 3, "D": 0}}
    assert_within_one(summary.histogram_after)
    assert sum(summary.histogram_after[3].values()) == 11
    assert sum(summary.histogram_after[4].values()) == 9
    actual: dict[int, dict[str, int]] = {}
    for letter, options, _ in layout(database, dataset_id).values():
        if options:
            actual.setdefault(len(options), dict.fromkeys(LETTERS[: len(options)], 0))
            actual[len(options)][letter] += 1
    assert actual == summary.histogram_after
    # Fewest moves: 3-option keeps 4 on A (moves 7); 4-option keeps B 3 (or 2) and C 3 (or 2).
    assert summary.changed == 7 + 4
    assert summary.unchanged == 20 - summary.changed


def test_balancing_keeps_each_correct_answer_text_and_distractor_order(
    database: Database, data_dir: Path
):
    dataset_id = skewed_dataset(database, data_dir)
    before = layout(database, dataset_id)
    balance_letters(database, dataset_id, curator="ana", seed=1)
    after = layout(database, dataset_id)
    for ext, (letter, options, answer) in before.items():
        new_letter, new_options, new_answer = after[ext]
        if not options:
            continue
        assert new_options[new_letter] == options[letter] == new_answer == answer
        old_distractors = [v for k, v in options.items() if k != letter]
        new_distractors = [v for k, v in new_options.items() if k != new_letter]
        assert new_distractors == old_distractors


def test_changed_items_get_a_reshuffle_generation_and_one_review_event(
    database: Database, data_dir: Path
):
    dataset_id = skewed_dataset(database, data_dir)
    with database.read() as session:
        statuses = dict(session.execute(select(Item.id, Item.status)).all())
        versions = dict(session.execute(select(Item.id, Item.version)).all())
    summary = balance_letters(database, dataset_id, curator="ana", seed=5)
    with database.read() as session:
        events = session.scalars(select(ReviewEvent)).all()
        assert len(events) == summary.changed
        assert len({event.item_id for event in events}) == summary.changed
        for event in events:
            item = session.get(Item, event.item_id)
            generation = session.get(Generation, item.current_generation_id)
            assert event.action is ReviewAction.RESHUFFLE
            assert event.curator == "ana" and event.batch_id == summary.batch_id
            assert event.reason == "balance letters (seed 5)"
            assert event.before["correct_letter"] != event.after["correct_letter"]
            assert event.after["current_generation_id"] == generation.id
            assert event.after["version"] == item.version == versions[item.id] + 1
            assert item.status is statuses[item.id]
            assert generation.source is GenerationSource.RESHUFFLE
            assert generation.shuffle_seed is None
            assert generation.full_question == compose_full_question(
                item.question, generation.options
            )


def test_fill_in_blank_and_pending_items_are_untouched(database: Database, data_dir: Path):
    dataset_id = skewed_dataset(database, data_dir)
    with database.read() as session:
        untouched = {
            item.external_id: (item.version, item.current_generation_id)
            for item in session.scalars(
                select(Item).where(Item.external_id.in_(["blank", "pending"]))
            )
        }
    balance_letters(database, dataset_id, curator="ana")
    with database.read() as session:
        for item in session.scalars(
            select(Item).where(Item.external_id.in_(["blank", "pending"]))
        ):
            assert (item.version, item.current_generation_id) == untouched[item.external_id]
            assert session.scalar(
                select(func.count()).select_from(ReviewEvent)
                .where(ReviewEvent.item_id == item.id)
            ) == 0


def test_an_already_balanced_dataset_changes_nothing(database: Database, data_dir: Path):
    dataset_id = skewed_dataset(database, data_dir)
    balance_letters(database, dataset_id, curator="ana", seed=2)
    with database.read() as session:
        generations = session.scalar(select(func.count()).select_from(Generation))
        events = session.scalar(select(func.count()).select_from(ReviewEvent))
    again = balance_letters(database, dataset_id, curator="bo", seed=9)
    assert again.changed == 0 and again.batch_id is None  # no empty batch to undo
    assert again.histogram_after == again.histogram_before
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(Generation)) == generations
        assert session.scalar(select(func.count()).select_from(ReviewEvent)) == events


def test_the_same_seed_gives_the_same_layout_on_identical_datasets(tmp_path: Path):
    layouts = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        database = open_database(f"sqlite:///{folder / 'vqa.db'}")
        try:
            dataset_id = skewed_dataset(database, folder)
            balance_letters(database, dataset_id, curator="ana", seed=42)
            layouts.append(layout(database, dataset_id))
        finally:
            database.close()
    assert layouts[0] == layouts[1]



def test_the_balance_command_prints_the_histograms_and_balances(
    database: Database, data_dir: Path, monkeypatch, capsys
):
    from vqa_engine.cli import main

    skewed_dataset(database, data_dir)
    monkeypatch.setenv("VQA_DATABASE_URL", f"sqlite:///{data_dir / 'vqa.db'}")
    assert main(["balance", "--dataset", "animals", "--seed", "4", "--curator", "ana"]) == 0
    out = capsys.readouterr().out
    assert "3 options: before A=11 B=0 C=0 | after" in out
    assert "11 items re-ordered, 9 unchanged" in out
    with database.read() as session:
        reasons = set(session.scalars(select(ReviewEvent.reason)))
    assert reasons == {"balance letters (seed 4)"}
    assert main(["balance", "--dataset", "nope"]) == 1


def test_balancing_across_many_small_pages_gives_the_same_result(
    database: Database, data_dir: Path, tmp_path: Path, monkeypatch
):
    from vqa_engine import balance

    whole = balance_letters(database, skewed_dataset(database, data_dir), curator="ana", seed=8)
    expected = layout(database, 1)
    folder = tmp_path / "paged"
    folder.mkdir()
    monkeypatch.setattr(balance, "PAGE_SIZE", 3)
    paged_database = open_database(f"sqlite:///{folder / 'vqa.db'}")
    try:
        paged = balance_letters(paged_database, skewed_dataset(paged_database, folder),
                                curator="ana", seed=8)
        assert layout(paged_database, 1) == expected
    finally:
        paged_database.close()
    assert paged == whole
