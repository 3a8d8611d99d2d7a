"""Curator actions: decisions, edits, reshuffles, regeneration, history and optimistic locking."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from curated_rows import add_dataset, add_image, add_item
from db.engine import Database
from db.models import (
    Generation,
    GenerationSource,
    Item,
    ItemStatus,
    QuestionType,
    RegenerateScope,
    ReviewAction,
    ReviewEvent,
    Run,
)
from vqa_engine import review
from vqa_engine.errors import ConflictError, ValidationError
from vqa_engine.generator import shuffle_options
from vqa_engine.settings import Endpoint


@dataclass(frozen=True)
class Items:
    mc: int
    blank: int
    pending: int
    failed: int
    generating: int


@pytest.fixture
def items(database: Database, data_dir: Path) -> Items:
    with database.write() as session:
        dataset = add_dataset(session)
        image = add_image(session, data_dir)
        mc = add_item(session, dataset, image, external_id="mc", answer="cat",
                      options={"A": "dog", "B": "cat", "C": "horse", "D": "cow"},
                      correct_letter="B")
        blank = add_item(session, dataset, image, external_id="blank", answer="3",
                         question="How many legs are visible? ___",
                         question_type=QuestionType.FILL_IN_BLANK)
        pending = add_item(session, dataset, image, external_id="pending",
                           status=ItemStatus.PENDING)
        failed = add_item(session, dataset, image, external_id="failed",
                          status=ItemStatus.FAILED)
        generating = add_item(session, dataset, image, external_id="generating",
                              status=ItemStatus.GENERATING)
        return Items(mc.id, blank.id, pending.id, failed.id, generating.id)


def version_of(database: Database, item_id: int) -> int:
    with database.read() as session:
        return session.get_one(Item, item_id).version


def state(database: Database, item_id: int) -> tuple[Item, Generation | None, list[ReviewEvent]]:
    with database.read() as session:
        item = session.get_one(Item, item_id)
        current = session.get(Generation, item.current_generation_id) if (
            item.current_generation_id) else None
        events = list(session.scalars(select(ReviewEvent).where(ReviewEvent.item_id == item_id)
                                      .order_by(ReviewEvent.id)))
        return item, current, events


def generation_count(database: Database, item_id: int) -> int:
    with database.read() as session:
        return session.scalar(select(func.count()).select_from(Generation)
                              .where(Generation.item_id == item_id)) or 0


# ---------------------------------------------------------------- accept / reject


def test_accept_marks_the_item_and_records_who_and_what(database: Database, items: Items) -> None:
    before = version_of(database, items.mc)
    result = review.accept(database, items.mc, curator=" alice ", expected_version=before)
    item, current, events = state(database, items.mc)
    assert item.status is ItemStatus.ACCEPTED
    assert result.version == item.version == before + 1
    assert result.status is ItemStatus.ACCEPTED and result.action is ReviewAction.ACCEPT
    (event,) = events
    assert event.id == result.event_id
    assert (event.curator, event.action) == ("alice", ReviewAction.ACCEPT)
    assert event.before["status"] == "generated" and event.after["status"] == "accepted"
    assert event.before["version"] == before and event.after["version"] == before + 1
    assert event.after["options"] == {"A": "dog", "B": "cat", "C": "horse", "D": "cow"}
    assert event.after["correct_letter"] == "B" and event.after["answer"] == "cat"
    assert current is not None and event.after["current_generation_id"] == current.id


def test_reject_keeps_the_reason_and_can_be_turned_around(database: Database,
                                                          items: Items) -> None:
    rejected = review.reject(database, items.mc, curator="bob",
                             expected_version=version_of(database, items.mc),
                             reason="the horse is a donkey")
    accepted = review.accept(database, items.mc, curator="alice",
                             expected_version=rejected.version)
    item, _, events = state(database, items.mc)
    assert item.status is ItemStatus.ACCEPTED and accepted.version == rejected.version + 1
    assert [(e.curator, e.action, e.reason) for e in events] == [
        ("bob", ReviewAction.REJECT, "the horse is a donkey"),
        ("alice", ReviewAction.ACCEPT, None),
    ]


@pytest.mark.parametrize(
    ("which", "why"),
    [
        ("pending", "has not been generated yet"),
        ("failed", "generation failed"),
        ("generating", "generating it right now"),
    ],
)
def test_decisions_are_refused_before_generation_with_the_reason(
    database: Database, items: Items, which: str, why: str,
) -> None:
    item_id = getattr(items, which)
    version = version_of(database, item_id)
    with pytest.raises(ValidationError, match=why) as caught:
        review.accept(database, item_id, curator="alice", expected_version=version)
    assert f"item {item_id} cannot be accepted" in str(caught.value)
    item, _, events = state(database, item_id)
    assert item.version == version and events == []


@pytest.mark.parametrize("curator", ["", "   "])
def test_a_curator_name_is_required(database: Database, items: Items, curator: str) -> None:
    with pytest.raises(ValidationError, match="curator name is empty"):
        review.accept(database, items.mc, curator=curator,
                      expected_version=version_of(database, items.mc))
    assert state(database, items.mc)[0].status is ItemStatus.GENERATED


# ---------------------------------------------------------------- optimistic locking


def test_a_second_curator_on_the_same_version_gets_a_conflict(database: Database,
                                                              items: Items) -> None:
    shown = version_of(database, items.mc)
    review.accept(database, items.mc, curator="alice", expected_version=shown)
    with pytest.raises(ConflictError) as caught:
        review.reject(database, items.mc, curator="bob", expected_version=shown)
    message = str(caught.value)
    assert f"item {items.mc} was changed by alice (accept) at " in message
    assert "since you opened it" in message and "the fresh version is shown" in message
    item, _, events = state(database, items.mc)
    assert item.status is ItemStatus.ACCEPTED
    assert [(e.curator, e.action) for e in events] == [("alice", ReviewAction.ACCEPT)]


def test_a_conflict_caused_by_a_run_says_so(database: Database, items: Items) -> None:
    shown = version_of(database, items.mc)
    with database.write() as session:
        session.get_one(Item, items.mc).attempts += 1  # the engine touched the item
    with pytest.raises(ConflictError, match="changed by a generation run"):
        review.accept(database, items.mc, curator="bob", expected_version=shown)


def test_simultaneous_actions_on_one_version_let_exactly_one_through(
    database: Database, items: Items,
) -> None:
    shown = version_of(database, items.mc)
    barrier = threading.Barrier(4)
    outcomes: dict[str, str] = {}

    def act(curator: str, action: str) -> None:
        barrier.wait()
        try:
            getattr(review, action)(database, items.mc, curator=curator, expected_version=shown)
            outcomes[curator] = "ok"
        except ConflictError:
            outcomes[curator] = "conflict"

    threads = [threading.Thread(target=act, args=(name, action)) for name, action in
               [("alice", "accept"), ("bob", "reject"), ("carol", "reshuffle"),
                ("dave", "accept")]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["conflict", "conflict", "conflict", "ok"]
    winner = next(name for name, outcome in outcomes.items() if outcome == "ok")
    item, _, events = state(database, items.mc)
    assert [e.curator for e in events] == [winner]
    assert item.version == shown + 1


def test_an_action_on_a_deleted_item_is_a_conflict(database: Database, items: Items) -> None:
    with pytest.raises(ConflictError, match="no longer exists"):
        review.accept(database, 999_999, curator="alice", expected_version=1)


# ---------------------------------------------------------------- edit


def test_edit_adds_a_generation_and_keeps_the_old_one(database: Database, items: Items) -> None:
    _, old, _ = state(database, items.mc)
    assert old is not None
    result = review.edit(
        database, items.mc, curator="alice", expected_version=version_of(database, items.mc),
        options={"A": "tiger", "B": "house cat", "C": "lynx"}, correct_letter="B",
        explanation="Small, domestic.", reason="answer too vague",
    )
    item, current, events = state(database, items.mc)
    assert current is not None and current.id == result.generation_id != old.id
    assert current.source is GenerationSource.EDIT
    assert (current.answer, current.correct_letter) == ("house cat", "B")
    assert current.options == {"A": "tiger", "B": "house cat", "C": "lynx"}
    assert current.distractors == ["tiger", "lynx"]
    assert current.explanation == "Small, domestic."
    assert current.full_question == (
        "What animal is shown?\nA: tiger\nB: house cat\nC: lynx")
    assert item.status is ItemStatus.GENERATED
    with database.read() as session:
        kept = session.get_one(Generation, old.id)
    assert kept.options == {"A": "dog", "B": "cat", "C": "horse", "D": "cow"}
    assert kept.answer == "cat" and kept.source is GenerationSource.MODEL
    (event,) = events
    assert event.action is ReviewAction.EDIT and event.reason == "answer too vague"
    assert event.before["current_generation_id"] == old.id
    assert event.after["current_generation_id"] == current.id
    assert event.before["answer"] == "cat" and event.after["answer"] == "house cat"


def test_an_edit_is_checked_like_a_model_generation(database: Database, items: Items) -> None:
    review.edit(database, items.mc, curator="alice",
                expected_version=version_of(database, items.mc),
                options={"A": "a cat", "B": "cat", "C": "lynx"}, correct_letter="B")
    _, current, _ = state(database, items.mc)
    assert current is not None and "distractor_is_answer" in current.quality_flags
    review.edit(database, items.mc, curator="alice",
                expected_version=version_of(database, items.mc),
                options={"A": "dog", "B": "cat", "C": "lynx"}, correct_letter="B")
    _, fixed, _ = state(database, items.mc)
    assert fixed is not None and fixed.quality_flags == {}


def test_edit_of_the_explanation_only_keeps_the_option_layout(database: Database,
                                                              items: Items) -> None:
    review.edit(database, items.mc, curator="alice",
                expected_version=version_of(database, items.mc), explanation="Pointy ears.")
    _, current, _ = state(database, items.mc)
    assert current is not None
    assert current.options == {"A": "dog", "B": "cat", "C": "horse", "D": "cow"}
    assert (current.correct_letter, current.explanation) == ("B", "Pointy ears.")


def test_edit_with_answer_and_distractors_places_them_around_the_correct_letter(
    database: Database, items: Items,
) -> None:
    review.edit(database, items.mc, curator="alice",
                expected_version=version_of(database, items.mc),
                answer="kitten", distractors=["puppy", "foal"], correct_letter="c")
    _, current, _ = state(database, items.mc)
    assert current is not None
    assert current.options == {"A": "puppy", "B": "foal", "C": "kitten"}
    assert current.correct_letter == "C" and current.shuffle_seed is None


def test_edit_keeps_the_accepted_decision(database: Database, items: Items) -> None:
    accepted = review.accept(database, items.mc, curator="alice",
                             expected_version=version_of(database, items.mc))
    review.edit(database, items.mc, curator="bob", expected_version=accepted.version,
                answer="tabby cat")
    item, current, _ = state(database, items.mc)
    assert item.status is ItemStatus.ACCEPTED
    assert current is not None and current.options["B"] == "tabby cat"


def test_edit_can_write_the_answer_of_a_failed_item(database: Database, items: Items) -> None:
    review.edit(database, items.failed, curator="alice",
                expected_version=version_of(database, items.failed),
                answer="cat", distractors=["dog", "fox"])
    item, current, _ = state(database, items.failed)
    assert item.status is ItemStatus.GENERATED
    assert current is not None and current.source is GenerationSource.EDIT
    assert sorted(current.options.values()) == ["cat", "dog", "fox"]
    assert current.shuffle_seed is not None
    assert shuffle_options("cat", ["dog", "fox"], current.shuffle_seed) == (
        current.options, current.correct_letter)


def test_edit_of_a_fill_in_blank_item_changes_the_answer(database: Database,
                                                         items: Items) -> None:
    review.edit(database, items.blank, curator="alice",
                expected_version=version_of(database, items.blank), answer=" 4 ")
    _, current, _ = state(database, items.blank)
    assert current is not None and (current.answer, current.options) == ("4", {})
    with pytest.raises(ValidationError, match="fill-in-blank: it has no options"):
        review.edit(database, items.blank, curator="alice",
                    expected_version=version_of(database, items.blank),
                    distractors=["5"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"options": {"A": "dog", "B": "  ", "C": "cat"}, "correct_letter": "C"},
         "option B (a distractor) is empty; type its text or remove it"),
        ({"options": {"A": "Red  Car", "B": "red car", "C": "bus"}, "correct_letter": "C"},
         "options A and B are the same ('Red  Car' and 'red car', ignoring case and spacing)"),
        ({"options": {"A": "dog", "B": "cat"}, "correct_letter": "E"},
         "correct letter 'E' is not one of the options; pick one of A, B"),
        ({"options": {"A": "cat"}, "correct_letter": "A"},
         "needs the correct answer and at least one distractor"),
        ({"options": {"A": "dog", "C": "cat"}, "correct_letter": "C"},
         "option letters A, C are not consecutive; use A, B"),
        ({"answer": "", "distractors": ["dog"]}, "the answer is empty"),
        ({"answer": "Cat", "distractors": ["dog", "CAT "]},
         "options B and C are the same ('Cat' and 'CAT',"),
        ({"answer": "cat", "distractors": ["dog"], "correct_letter": "D"},
         "correct letter 'D' is not one of the options; pick one of A, B"),
        ({"options": {"A": "dog", "B": "cat"}, "correct_letter": "A", "answer": "cat"},
         "the answer 'cat' is not option A ('dog')"),
        ({"explanation": "It has whiskers."}, "the edit changes nothing"),
    ],
)
def test_invalid_edits_say_what_to_fix_and_change_nothing(
    database: Database, items: Items, changes: dict[str, object], message: str,
) -> None:
    version = version_of(database, items.mc)
    with pytest.raises(ValidationError) as caught:
        review.edit(database, items.mc, curator="alice", expected_version=version,
                    **changes)  # type: ignore[arg-type]
    assert message in str(caught.value)
    item, current, events = state(database, items.mc)
    assert item.version == version and events == []
    assert current is not None and current.source is GenerationSource.MODEL
    assert generation_count(database, items.mc) == 1


def test_edit_is_refused_while_a_run_generates_the_item(database: Database,
                                                        items: Items) -> None:
    with pytest.raises(ValidationError, match="generating it right now"):
        review.edit(database, items.generating, curator="alice",
                    expected_version=version_of(database, items.generating), answer="cat",
                    distractors=["dog"])


# ---------------------------------------------------------------- reshuffle


def test_reshuffle_records_a_new_seed_and_keeps_the_texts(database: Database,
                                                          items: Items) -> None:
    _, old, _ = state(database, items.mc)
    assert old is not None
    result = review.reshuffle(database, items.mc, curator="alice",
                              expected_version=version_of(database, items.mc))
    item, current, events = state(database, items.mc)
    assert current is not None and current.id == result.generation_id != old.id
    assert current.source is GenerationSource.RESHUFFLE
    assert sorted(current.options.values()) == sorted(old.options.values())
    assert list(current.options.values()) != list(old.options.values())
    assert current.options[current.correct_letter] == "cat" == current.answer
    assert current.shuffle_seed is not None and current.shuffle_seed != old.shuffle_seed
    assert shuffle_options("cat", ["dog", "horse", "cow"], current.shuffle_seed) == (
        current.options, current.correct_letter)
    assert current.full_question.splitlines()[1:] == [
        f"{k}: {v}" for k, v in current.options.items()]
    assert item.status is ItemStatus.GENERATED
    assert events[0].action is ReviewAction.RESHUFFLE


def test_reshuffle_restates_the_letters_its_flags_name(database: Database,
                                                      data_dir: Path) -> None:
    from vqa_engine.model_checks import CheckAnswer, judge

    options = {"A": "dog", "B": "a tabby cat", "C": "cow"}
    checks = judge([CheckAnswer("blind", 0, "B"),
                    CheckAnswer("circular", 0, "B"), CheckAnswer("circular", 1, "A"),
                    CheckAnswer("circular", 2, "B")], "B", 3)
    with database.write() as session:
        dataset = add_dataset(session)
        image = add_image(session, data_dir)
        item_id = add_item(session, dataset, image, external_id="biased", answer="a tabby cat",
                           options=options, correct_letter="B",
                           flags={"length_bias": {"reason": "the correct option B is the only "
                                                  "longest (11 characters, next 3)"},
                                  "refusal": {"reason": "kept as it was"}, **checks}).id
    review.reshuffle(database, item_id, curator="alice",
                     expected_version=version_of(database, item_id))
    _, current, _ = state(database, item_id)
    assert current is not None
    moved = {old: new for old, text in options.items()
             for new, again in current.options.items() if again == text}
    flags = current.quality_flags
    new = moved["B"]
    assert flags["length_bias"]["reason"].startswith(f"the correct option {new} is the only")
    assert flags["blind_answerable"]["reason"] == f"answered {new} correctly without the image"
    assert flags["circular_inconsistent"]["reason"] == (
        f"picked {new}, {moved['A']}, {new} over 3 rotations; recorded answer is {new}")
    assert flags["refusal"] == {"reason": "kept as it was"}


def test_reshuffle_of_a_fill_in_blank_item_is_refused(database: Database, items: Items) -> None:
    with pytest.raises(ValidationError, match="no options to reshuffle"):
        review.reshuffle(database, items.blank, curator="alice",
                         expected_version=version_of(database, items.blank))


# ---------------------------------------------------------------- regenerate


def test_regenerate_queues_the_item_with_the_reason_and_records_it(
    database: Database, items: Items,
) -> None:
    endpoint = Endpoint(base_url="http://127.0.0.1:9/v1", model="sim", api_key="sk-test-0000")
    result = review.regenerate(
        database, items.mc, curator="alice", expected_version=version_of(database, items.mc),
        scope=RegenerateScope.DISTRACTORS, reason="distractors too easy", endpoint=endpoint,
    )
    item, current, events = state(database, items.mc)
    assert item.status is ItemStatus.PENDING and result.status is ItemStatus.PENDING
    assert item.regenerate_scope is RegenerateScope.DISTRACTORS
    assert item.regenerate_reason == "distractors too easy" and item.regeneration == 1
    assert result.run_id is not None and item.run_id == result.run_id
    assert result.version == item.version
    assert current is not None and current.answer == "cat"  # kept until the new one lands
    (event,) = events
    assert (event.action, event.reason) == (ReviewAction.REGENERATE, "distractors too easy")
    assert event.before["status"] == "generated" and event.after["status"] == "pending"
    assert event.after["run_id"] == result.run_id and event.after["scope"] == "distractors"
    with database.read() as session:
        run = session.get_one(Run, result.run_id)
    assert "sk-test-0000" not in repr(run.config)


def test_regenerating_distractors_of_a_fill_in_blank_item_is_refused(
    database: Database, items: Items,
) -> None:
    with pytest.raises(ValidationError, match="regenerate the whole item"):
        review.regenerate(database, items.blank, curator="alice",
                          expected_version=version_of(database, items.blank),
                          scope=RegenerateScope.DISTRACTORS, endpoint=Endpoint())
    assert state(database, items.blank)[2] == []


def test_regenerate_on_a_stale_version_is_a_conflict(database: Database, items: Items) -> None:
    shown = version_of(database, items.mc)
    review.accept(database, items.mc, curator="alice", expected_version=shown)
    with pytest.raises(ConflictError, match="changed by alice"):
        review.regenerate(database, items.mc, curator="bob", expected_version=shown,
                          endpoint=Endpoint())
    assert state(database, items.mc)[0].status is ItemStatus.ACCEPTED


# ---------------------------------------------------------------- history


def test_history_lists_generations_and_actions_newest_first(database: Database,
                                                            items: Items) -> None:
    rejected = review.reject(database, items.mc, curator="bob",
                             expected_version=version_of(database, items.mc), reason="wrong")
    edited = review.edit(database, items.mc, curator="alice", expected_version=rejected.version,
                         answer="kitten")
    review.accept(database, items.mc, curator="alice", expected_version=edited.version)
    with database.read() as session:
        entries = review.history(session, items.mc)
    assert [(e.kind, e.actor, e.action) for e in entries] == [
        ("review", "alice", "accept"),
        ("review", "alice", "edit"),
        ("review", "bob", "reject"),
        ("generation", "qwen2.5-vl-7b-instruct", "generate"),
    ]
    accept, edit, reject, generated = entries
    assert [(c.field, c.before, c.after) for c in accept.changes] == [
        ("status", "rejected", "accepted")]
    changed = {c.field: (c.before, c.after) for c in edit.changes}
    assert changed["answer"] == ("cat", "kitten")
    assert changed["options"][1]["B"] == "kitten"
    assert edit.generation_id == edited.generation_id
    assert reject.reason == "wrong"
    assert generated.summary == "answer 'cat', correct B"


@pytest.mark.postgres
def test_simultaneous_actions_are_serialised_on_postgresql(
    postgres_database: Database, data_dir: Path,
) -> None:
    with postgres_database.write() as session:
        item_id = add_item(session, add_dataset(session), add_image(session, data_dir),
                           external_id="pg").id
    shown = version_of(postgres_database, item_id)
    barrier = threading.Barrier(3)
    outcomes: list[str] = []

    def act(curator: str) -> None:
        barrier.wait()
        try:
            review.reshuffle(postgres_database, item_id, curator=curator,
                             expected_version=shown)
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=act, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "conflict", "ok"]
    assert generation_count(postgres_database, item_id) == 2
    assert len(state(postgres_database, item_id)[2]) == 1
