"""Bulk actions on a filter: preview equals what is applied; a batch undoes exactly, or not at all."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from curated_rows import add_dataset, add_image, add_item
from db.engine import Database
from db.models import (
    BulkAction,
    Generation,
    Item,
    ItemStatus,
    QuestionType,
    ReviewBatch,
    ReviewEvent,
    Run,
)
from db.queries import ANY_FLAG, ItemFilter
from vqa_engine import bulk, review
from vqa_engine.balance import balance_letters, plan_balance
from vqa_engine.errors import ConflictError
from vqa_engine.runs import cancel_run
from vqa_engine.settings import Endpoint

ENDPOINT = Endpoint("http://127.0.0.1:9/v1", "test-model")
REFUSAL = {"refusal": "the answer reads as a refusal: 'I cannot see the image'"}
DUPLICATE = {"duplicate_options": "options B and C are the same"}


@pytest.fixture
def dataset_id(database: Database, data_dir: Path) -> int:
    with database.write() as session:
        dataset = add_dataset(session)
        image = add_image(session, data_dir)
        for index in range(5):
            add_item(session, dataset, image, external_id=f"plain{index}", answer=f"cat{index}",
                     options={"A": f"cat{index}", "B": "dog", "C": "cow"})
        add_item(session, dataset, image, external_id="dup", flags=DUPLICATE)
        add_item(session, dataset, image, external_id="refusal1", answer="I cannot see it",
                 options={"A": "dog", "B": "I cannot see it"}, flags=REFUSAL)
        add_item(session, dataset, image, external_id="refusal2", answer="无法", flags=REFUSAL,
                 options={"A": "无法", "B": "dog"})
        add_item(session, dataset, image, external_id="accepted", status=ItemStatus.ACCEPTED)
        add_item(session, dataset, image, external_id="rejected-flagged",
                 status=ItemStatus.REJECTED, flags=DUPLICATE)
        add_item(session, dataset, image, external_id="failed", status=ItemStatus.FAILED)
        add_item(session, dataset, image, external_id="pending", status=ItemStatus.PENDING)
        add_item(session, dataset, image, external_id="blank", answer="seven",
                 question_type=QuestionType.FILL_IN_BLANK)
        return dataset.id


def full_state(database: Database, dataset_id: int) -> dict[int, tuple[Any, ...]]:
    """Every item's status and current generation with its content, versions left out."""
    with database.read() as session:
        rows = session.execute(
            select(Item.id, Item.status, Item.current_generation_id, Generation.answer,
                   Generation.options, Generation.correct_letter, Generation.explanation)
            .outerjoin(Generation, Generation.id == Item.current_generation_id)
            .where(Item.dataset_id == dataset_id).order_by(Item.id)
        ).all()
    return {row[0]: tuple(row[1:]) for row in rows}


def changed_items(before: dict[int, tuple[Any, ...]], after: dict[int, tuple[Any, ...]]) -> int:
    return sum(1 for item_id in before if before[item_id] != after[item_id])


EXPECTED = {
    BulkAction.ACCEPT: (6, {"not generated": 2, "flagged": 3, "already decided": 2}),
    BulkAction.REJECT: (2, {"not generated": 2, "already decided": 2, "not a refusal": 7}),
    BulkAction.RESHUFFLE: (10, {"not generated": 2, "fill-in-blank": 1}),
    BulkAction.REGENERATE: (5, {"pending or generating": 1, "already accepted": 1,
                                "not failed or flagged": 6}),
}


@pytest.mark.parametrize("action", list(EXPECTED), ids=lambda a: a.value)
def test_preview_counts_what_apply_changes_and_undo_restores_everything(
    database: Database, dataset_id: int, action: BulkAction, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "CHUNK_SIZE", 2)  # several chunks even on a small dataset
    item_filter = ItemFilter(dataset_id=dataset_id)
    shown = bulk.preview(database, item_filter, action)
    eligible, skipped = EXPECTED[action]
    assert (shown.matching, shown.eligible, dict(shown.skipped)) == (13, eligible, skipped)
    before = full_state(database, dataset_id)

    result = bulk.apply(database, item_filter, action, curator="ana", token=shown.token,
                        endpoint=ENDPOINT)
    after = full_state(database, dataset_id)
    assert result.changed == shown.eligible == changed_items(before, after)
    with database.read() as session:
        batch = session.get_one(ReviewBatch, result.batch_id)
        events = session.scalar(select(func.count()).select_from(ReviewEvent)
                                .where(ReviewEvent.batch_id == result.batch_id))
    assert batch.item_count == events == shown.eligible and batch.action is action

    if action is BulkAction.REGENERATE:
        with database.read() as session:
            runs = session.scalars(select(Run)).all()
            queued = session.scalars(select(Item.run_id).where(Item.status == ItemStatus.PENDING)).all()
        assert len(runs) == 1 and runs[0].id == result.run_id == batch.run_id
        assert Counter(queued) == {None: 1, result.run_id: eligible}  # and the old pending one
        with pytest.raises(ConflictError, match="has not landed yet"):
            bulk.undo_batch(database, result.batch_id, curator="bob")
        assert cancel_run(database, runs[0].id)

    undone = bulk.undo_batch(database, result.batch_id, curator="bob")
    assert undone.restored == shown.eligible
    assert full_state(database, dataset_id) == before
    with database.read() as session:
        batch = session.get_one(ReviewBatch, result.batch_id)
        standing = session.scalar(select(func.count()).select_from(ReviewEvent).where(
            ReviewEvent.batch_id == result.batch_id, ReviewEvent.undone_by.is_(None)))
    assert batch.undone_by == "bob" and batch.undone_at is not None and standing == 0
    with pytest.raises(ConflictError, match="already undone"):
        bulk.undo_batch(database, result.batch_id, curator="bob")


def test_the_preview_sentence_says_what_is_skipped(database: Database, dataset_id: int) -> None:
    shown = bulk.preview(database, ItemFilter(dataset_id=dataset_id), BulkAction.ACCEPT)
    assert shown.sentence == ("accept 6 of 13 items matching the filter; 7 skipped: "
                              "3 flagged, 2 already decided, 2 not generated")


def test_preview_follows_the_filter(database: Database, dataset_id: int) -> None:
    flagged = ItemFilter(dataset_id=dataset_id, flag=ANY_FLAG, statuses=(ItemStatus.GENERATED,))
    shown = bulk.preview(database, flagged, BulkAction.REGENERATE)
    assert (shown.matching, shown.eligible) == (3, 3)


def test_apply_refuses_when_the_items_changed_since_the_preview(
    database: Database, dataset_id: int
) -> None:
    item_filter = ItemFilter(dataset_id=dataset_id)
    shown = bulk.preview(database, item_filter, BulkAction.ACCEPT)
    with database.read() as session:
        first = session.scalars(select(Item).where(Item.external_id == "plain0")).one()
    review.edit(database, first.id, curator="carl", expected_version=first.version,
                explanation="clearer")
    before = full_state(database, dataset_id)
    with pytest.raises(ConflictError, match="changed since the preview"):
        bulk.apply(database, item_filter, BulkAction.ACCEPT, curator="ana", token=shown.token)
    assert full_state(database, dataset_id) == before
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(ReviewBatch)) == 0


def test_undo_of_a_batch_is_refused_when_one_item_changed_and_nothing_is_undone(
    database: Database, dataset_id: int
) -> None:
    item_filter = ItemFilter(dataset_id=dataset_id)
    shown = bulk.preview(database, item_filter, BulkAction.ACCEPT)
    result = bulk.apply(database, item_filter, BulkAction.ACCEPT, curator="ana", token=shown.token)
    with database.read() as session:
        changed = session.scalars(select(Item).where(Item.external_id == "plain3")).one()
    review.reject(database, changed.id, curator="carl", expected_version=changed.version)
    after = full_state(database, dataset_id)
    with pytest.raises(ConflictError, match=rf"items {changed.id}\).*rejected by carl.*Nothing was undone"):
        bulk.undo_batch(database, result.batch_id, curator="bob")
    assert full_state(database, dataset_id) == after
    with database.read() as session:
        assert session.get_one(ReviewBatch, result.batch_id).undone_at is None


def test_a_batch_cut_short_by_a_crash_undoes_the_part_applied(
    database: Database, dataset_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "CHUNK_SIZE", 2)
    item_filter = ItemFilter(dataset_id=dataset_id)
    before = full_state(database, dataset_id)
    shown = bulk.preview(database, item_filter, BulkAction.RESHUFFLE)
    real_change, calls = bulk._change, []

    def crashing(*args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("power cut")
        return real_change(*args, **kwargs)

    monkeypatch.setattr(bulk, "_change", crashing)
    with pytest.raises(RuntimeError):
        bulk.apply(database, item_filter, BulkAction.RESHUFFLE, curator="ana", token=shown.token)
    with database.read() as session:
        batch = session.scalars(select(ReviewBatch)).one()
    assert batch.item_count == 4 == changed_items(before, full_state(database, dataset_id))
    assert bulk.undo_batch(database, batch.id, curator="ana").restored == 4
    assert full_state(database, dataset_id) == before


def test_items_undone_one_by_one_are_left_alone_by_the_batch_undo(
    database: Database, dataset_id: int
) -> None:
    item_filter = ItemFilter(dataset_id=dataset_id)
    before = full_state(database, dataset_id)
    shown = bulk.preview(database, item_filter, BulkAction.REJECT)
    result = bulk.apply(database, item_filter, BulkAction.REJECT, curator="ana", token=shown.token)
    with database.read() as session:
        first = session.scalars(select(ReviewEvent).where(
            ReviewEvent.batch_id == result.batch_id).order_by(ReviewEvent.id)).first()
    assert first is not None
    review.undo(database, first.id, curator="ana")
    undone = bulk.undo_batch(database, result.batch_id, curator="ana")
    assert (undone.restored, undone.already_undone) == (1, 1)
    assert full_state(database, dataset_id) == before


def test_a_balance_is_one_batch_and_its_undo_restores_the_letters(
    database: Database, data_dir: Path
) -> None:
    with database.write() as session:
        dataset = add_dataset(session, "letters")
        image = add_image(session, data_dir)
        for index in range(8):
            answer = f"cat{index}"
            add_item(session, dataset, image, external_id=f"i{index}", answer=answer,
                     options={"A": answer, "B": "dog", "C": "cow"}, correct_letter="A")
        dataset_id = dataset.id
    before = full_state(database, dataset_id)
    plan = plan_balance(database, dataset_id, seed=5)
    assert full_state(database, dataset_id) == before  # planning changes nothing
    summary = balance_letters(database, dataset_id, curator="ana", seed=5)
    assert summary.changed == plan.moving == 5 and summary.histogram_after == plan.histogram_after
    batches = bulk.list_batches(database, dataset_id)
    assert [(b.id, b.action, b.item_count) for b in batches] == [
        (summary.batch_id, BulkAction.BALANCE, 5)]
    bulk.undo_batch(database, batches[0].id, curator="ana")
    assert full_state(database, dataset_id) == before
    assert bulk.list_batches(database, dataset_id)[0].undone


@pytest.mark.parametrize("action", [BulkAction.REJECT, BulkAction.RESHUFFLE], ids=lambda a: a.value)
def test_bulk_apply_and_undo_on_postgresql(
    postgres_database: Database, data_dir: Path, action: BulkAction
) -> None:
    with postgres_database.write() as session:
        dataset = add_dataset(session)
        image = add_image(session, data_dir)
        for index in range(3):
            add_item(session, dataset, image, external_id=f"r{index}", answer="I cannot see it",
                     options={"A": "I cannot see it", "B": f"dog{index}"}, flags=REFUSAL)
        add_item(session, dataset, image, external_id="plain")
        dataset_id = dataset.id
    item_filter = ItemFilter(dataset_id=dataset_id)
    before = full_state(postgres_database, dataset_id)
    shown = bulk.preview(postgres_database, item_filter, action)
    assert shown.eligible == (3 if action is BulkAction.REJECT else 4)
    result = bulk.apply(postgres_database, item_filter, action, curator="ana", token=shown.token)
    assert result.changed == shown.eligible
    assert changed_items(before, full_state(postgres_database, dataset_id)) == shown.eligible
    bulk.undo_batch(postgres_database, result.batch_id, curator="ana")
    assert full_state(postgres_database, dataset_id) == before
