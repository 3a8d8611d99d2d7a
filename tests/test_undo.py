"""Undo of single review decisions: exact restore, refusals that say what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from curated_rows import add_dataset, add_image, add_item
from db.engine import Database
from db.models import Item, ReviewAction, ReviewEvent
from vqa_engine import review
from vqa_engine.errors import ConflictError
from vqa_engine.generator import AttemptFailure, GenerationResult, ItemOutcome
from vqa_engine.runs import cancel_run
from vqa_engine.settings import Endpoint
from vqa_engine.work_queue import claim_items, store_outcomes

ENDPOINT = Endpoint("http://127.0.0.1:9/v1", "test-model")
WORKER = "test-host:1:abcd"


@pytest.fixture
def item_id(database: Database, data_dir: Path) -> int:
    with database.write() as session:
        dataset = add_dataset(session)
        image = add_image(session, data_dir)
        item = add_item(session, dataset, image, external_id="mc", answer="cat",
                        options={"A": "dog", "B": "cat", "C": "horse", "D": "cow"},
                        correct_letter="B")
        return item.id


def state(database: Database, item_id: int) -> dict[str, Any]:
    """The item's reviewable state without its version (which every write moves on)."""
    with database.read() as session:
        item = session.get_one(Item, item_id)
        shot = review.snapshot(item, review.current_generation(session, item))
    shot.pop("version")
    return shot


def version(database: Database, item_id: int) -> int:
    with database.read() as session:
        return session.get_one(Item, item_id).version


def land(database: Database, run_id: int, item_id: int, *, ok: bool = True) -> None:
    """What the worker does when a regeneration comes back: claim, then store the outcome."""
    with database.write() as session:
        assert [c.item_id for c in claim_items(session, run_id, WORKER, 10)] == [item_id]
    if ok:
        options = {"A": "lion", "B": "tiger", "C": "cat"}
        outcome = ItemOutcome(item_id, result=GenerationResult(
            answer="cat", explanation="new", distractors=["lion", "tiger"], options=options,
            correct_letter="C", shuffle_seed=1, full_question="q", raw_answer="cat",
            raw_distractors="lion\ntiger"), attempts=1, model="m")
    else:
        outcome = ItemOutcome(item_id, failures=[AttemptFailure("timeout", "answer", "slow")],
                              attempts=1, model="m")
    with database.write() as session:
        store_outcomes(session, run_id, WORKER, [outcome])


ACTIONS = {
    "accept": lambda db, i, v: review.accept(db, i, curator="ana", expected_version=v),
    "reject": lambda db, i, v: review.reject(db, i, curator="ana", expected_version=v),
    "edit": lambda db, i, v: review.edit(db, i, curator="ana", expected_version=v,
                                         answer="house cat", explanation="fixed"),
    "reshuffle": lambda db, i, v: review.reshuffle(db, i, curator="ana", expected_version=v),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_undo_restores_the_exact_state_before_the_action(
    database: Database, item_id: int, action: str
) -> None:
    before = state(database, item_id)
    done = ACTIONS[action](database, item_id, version(database, item_id))
    assert state(database, item_id) != before
    result = review.undo(database, done.event_id, curator="bob")
    assert state(database, item_id) == before
    assert result.action is ReviewAction.UNDO and result.version == version(database, item_id)
    with database.read() as session:
        undone = session.get_one(ReviewEvent, done.event_id)
        undo_event = session.get_one(ReviewEvent, result.event_id)
    assert undone.undone_by == undo_event.id
    assert undo_event.curator == "bob" and f"event {done.event_id}" in (undo_event.reason or "")
    assert {k: v for k, v in undo_event.after.items() if k not in ("version", "undoes")} == {
        k: v for k, v in undone.before.items() if k != "version"}
    assert undo_event.after["undoes"] == done.event_id


def test_undo_is_refused_twice_and_for_an_undo(database: Database, item_id: int) -> None:
    done = review.accept(database, item_id, curator="ana", expected_version=version(database, item_id))
    undone = review.undo(database, done.event_id, curator="bob")
    with pytest.raises(ConflictError, match="already undone"):
        review.undo(database, done.event_id, curator="bob")
    with pytest.raises(ConflictError, match="use the action again"):
        review.undo(database, undone.event_id, curator="bob")


def test_undo_is_refused_while_a_later_decision_stands_and_names_it(
    database: Database, item_id: int
) -> None:
    accepted = review.accept(database, item_id, curator="ana", expected_version=version(database, item_id))
    edited = review.edit(database, item_id, curator="carl", expected_version=accepted.version,
                         answer="house cat")
    shown = state(database, item_id)
    with pytest.raises(ConflictError, match=rf"item {item_id} was edited by carl at .* undo that first"):
        review.undo(database, accepted.event_id, curator="bob")
    assert state(database, item_id) == shown
    review.undo(database, edited.event_id, curator="bob")
    review.undo(database, accepted.event_id, curator="bob")
    assert state(database, item_id)["status"] == "generated"


def test_undo_is_refused_when_a_run_changed_the_item_since(
    database: Database, item_id: int
) -> None:
    from vqa_engine.runs import request_regeneration

    accepted = review.accept(database, item_id, curator="ana", expected_version=version(database, item_id))
    request_regeneration(database, [item_id], scope="whole", reason=None, endpoint=ENDPOINT)
    with pytest.raises(ConflictError, match="changed by a generation run"):
        review.undo(database, accepted.event_id, curator="bob")


def test_undo_of_a_regeneration_waits_until_it_landed_then_restores(
    database: Database, item_id: int
) -> None:
    before = state(database, item_id)
    requested = review.regenerate(database, item_id, curator="ana",
                                  expected_version=version(database, item_id), endpoint=ENDPOINT)
    assert requested.run_id is not None
    with pytest.raises(ConflictError, match="has not landed yet"):
        review.undo(database, requested.event_id, curator="bob")
    land(database, requested.run_id, item_id)
    landed = state(database, item_id)
    assert landed["answer"] == "cat" and landed["correct_letter"] == "C"
    assert landed["current_generation_id"] != before["current_generation_id"]
    review.undo(database, requested.event_id, curator="bob")
    assert state(database, item_id) == before


def test_undo_of_a_failed_regeneration_restores_the_decision(
    database: Database, item_id: int
) -> None:
    accepted = review.accept(database, item_id, curator="ana", expected_version=version(database, item_id))
    before = state(database, item_id)
    requested = review.regenerate(database, item_id, curator="ana",
                                  expected_version=accepted.version, endpoint=ENDPOINT)
    assert requested.run_id is not None
    land(database, requested.run_id, item_id, ok=False)
    assert state(database, item_id)["status"] == "failed"
    review.undo(database, requested.event_id, curator="bob")
    assert state(database, item_id) == before


def test_undo_of_a_regeneration_whose_run_was_cancelled_before_it(
    database: Database, item_id: int
) -> None:
    before = state(database, item_id)
    requested = review.regenerate(database, item_id, curator="ana",
                                  expected_version=version(database, item_id), endpoint=ENDPOINT)
    assert requested.run_id is not None and cancel_run(database, requested.run_id)
    review.undo(database, requested.event_id, curator="bob")
    assert state(database, item_id) == before


def test_undo_of_a_regeneration_is_refused_after_a_later_decision(
    database: Database, item_id: int
) -> None:
    requested = review.regenerate(database, item_id, curator="ana",
                                  expected_version=version(database, item_id), endpoint=ENDPOINT)
    assert requested.run_id is not None
    land(database, requested.run_id, item_id)
    review.accept(database, item_id, curator="carl", expected_version=version(database, item_id))
    with pytest.raises(ConflictError, match="accepted by carl"):
        review.undo(database, requested.event_id, curator="bob")


def test_history_marks_undone_events_and_blockers_explain_each_entry(
    database: Database, item_id: int
) -> None:
    accepted = review.accept(database, item_id, curator="ana", expected_version=version(database, item_id))
    rejected = review.reject(database, item_id, curator="ana", expected_version=accepted.version)
    undone = review.undo(database, rejected.event_id, curator="bob")
    with database.read() as session:
        entries = {e.event_id: e for e in review.history(session, item_id) if e.event_id}
        blockers = review.undo_blockers(session, item_id)
    assert entries[rejected.event_id].summary.endswith("(undone)")
    assert blockers[accepted.event_id] is None
    assert "already undone" in (blockers[rejected.event_id] or "")
    assert "use the action again" in (blockers[undone.event_id] or "")
    with database.read() as session:
        assert session.scalar(select(ReviewEvent.undone_by).where(
            ReviewEvent.id == rejected.event_id)) == undone.event_id
