"""Curator decisions: accept, reject, edit, reshuffle, regenerate — safe with many curators.

Every action names its curator and the item version the curator was looking at. The write
transaction re-reads the item under a lock (`BEGIN IMMEDIATE` on SQLite, `SELECT ... FOR
UPDATE` on PostgreSQL) and refuses with `ConflictError` when the version moved on, so two
curators acting on the same screen can never silently overwrite each other; the item's
`version_id_col` backs this up at flush time.

Nothing is overwritten. An edit or a reshuffle adds a new `Generation` and points the item
at it; every action adds a `ReviewEvent` holding the reviewable state before and after, so
the card's history is a query.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

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
    RunStatus,
    utcnow,
)
from vqa_engine.errors import ConflictError, ValidationError, VQAError
from vqa_engine.model_checks import relabel_check_flags
from vqa_engine.quality import LETTERED_FLAGS, check_generation
from vqa_engine.records import LETTERS, compose_full_question

if TYPE_CHECKING:
    from vqa_engine.runs import RunSettings
    from vqa_engine.settings import Endpoint

MAX_CURATOR_LENGTH = 200
RESHUFFLE_ATTEMPTS = 32
SEED_BITS = 63

DECIDABLE = frozenset({ItemStatus.GENERATED, ItemStatus.ACCEPTED, ItemStatus.REJECTED})
REGENERATABLE = frozenset(
    {ItemStatus.GENERATED, ItemStatus.ACCEPTED, ItemStatus.REJECTED, ItemStatus.FAILED}
)
EDITABLE = frozenset(set(ItemStatus) - {ItemStatus.GENERATING})

_WHY_NOT_DECIDABLE = {
    ItemStatus.PENDING: "it has not been generated yet; start a run or wait for the one queued",
    ItemStatus.GENERATING: "a run is generating it right now; wait for the result",
    ItemStatus.FAILED: "its generation failed; regenerate it or edit in an answer first",
}


@dataclass(frozen=True)
class ReviewResult:
    """What an action left behind; `version` is what the next action must expect."""

    item_id: int
    action: ReviewAction
    status: ItemStatus
    version: int
    event_id: int
    generation_id: int | None
    run_id: int | None = None


@dataclass(frozen=True)
class Change:
    field: str
    before: Any
    after: Any


@dataclass(frozen=True)
class HistoryEntry:
    """One line of an item's history: a model generation or a curator's action."""

    at: datetime
    kind: str  # "generation" | "review"
    actor: str
    action: str
    summary: str
    changes: tuple[Change, ...] = ()
    reason: str | None = None
    generation_id: int | None = None
    event_id: int | None = None


# ---------------------------------------------------------------- validation


def clean_curator(name: str) -> str:
    cleaned = (name or "").strip()
    if not cleaned:
        raise ValidationError("curator name is empty; type your name before reviewing")
    if len(cleaned) > MAX_CURATOR_LENGTH:
        raise ValidationError(
            f"curator name is {len(cleaned)} characters long; use at most {MAX_CURATOR_LENGTH}"
        )
    return cleaned




def comparable(text: str) -> str:
    """How two option texts are compared: case, accents' forms and spacing ignored."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def _quoted(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def validate_options(options: Mapping[str, str], correct_letter: str) -> None:
    """Raise `ValidationError` naming what to fix in a multiple-choice option set."""
    letters = list(options)
    if len(letters) < 2:
        raise ValidationError(
            "a multiple-choice item needs the correct answer and at least one distractor; "
            "add a distractor"
        )
    if len(letters) > len(LETTERS):
        raise ValidationError(f"{len(letters)} options is too many; use at most {len(LETTERS)}")
    expected = list(LETTERS[: len(letters)])
    if letters != expected:
        raise ValidationError(
            f"option letters {', '.join(letters)} are not consecutive; use {', '.join(expected)}"
        )
    seen: dict[str, str] = {}
    for letter, text in options.items():
        if not text.strip():
            what = "the correct answer" if letter == correct_letter else "a distractor"
            raise ValidationError(
                f"option {letter} ({what}) is empty; type its text or remove it"
            )
        key = comparable(text)
        if key in seen:
            first = seen[key]
            raise ValidationError(
                f"options {first} and {letter} are the same ({_quoted(options[first])} and "
                f"{_quoted(text)}, ignoring case and spacing); make every option different"
            )
        seen[key] = letter
    if correct_letter not in options:
        raise ValidationError(
            f"correct letter {correct_letter!r} is not one of the options; pick one of "
            f"{', '.join(letters)}"
        )


# ---------------------------------------------------------------- state snapshots


def snapshot(item: Item, generation: Generation | None) -> dict[str, Any]:
    return {
        "status": item.status.value,
        "version": item.version,
        "current_generation_id": item.current_generation_id,
        "answer": generation.answer if generation else None,
        "options": dict(generation.options or {}) if generation else {},
        "correct_letter": generation.correct_letter if generation else None,
        "explanation": generation.explanation if generation else None,
    }


def current_generation(session: Session, item: Item) -> Generation | None:
    if item.current_generation_id is None:
        return None
    return session.get(Generation, item.current_generation_id)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "an unknown time"
    moment = _aware(moment).astimezone(timezone.utc)
    if moment.date() == datetime.now(timezone.utc).date():
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _conflict(session: Session, item: Item, expected_version: int) -> ConflictError:
    last = session.scalar(
        select(ReviewEvent).where(ReviewEvent.item_id == item.id).order_by(ReviewEvent.id.desc())
    )
    if last is not None and (last.after or {}).get("version") == item.version:
        who, when = last.curator, _when(last.created_at)
        what = f" ({last.action.value})"
    else:
        who, when, what = "a generation run", _when(item.updated_at), ""
    return ConflictError(
        f"item {item.id} was changed by {who}{what} at {when} since you opened it "
        f"(version {expected_version} -> {item.version}); the fresh version is shown, "
        "check it and repeat your action if it still applies"
    )


def _locked_item(session: Session, item_id: int, expected_version: int) -> Item:
    item = session.scalar(select(Item).where(Item.id == item_id).with_for_update())
    if item is None:
        raise ConflictError(
            f"item {item_id} no longer exists (its dataset may have been deleted); "
            "go back to the item list"
        )
    if item.version != expected_version:
        raise _conflict(session, item, expected_version)
    return item


def record_event(
    session: Session,
    item: Item,
    *,
    curator: str,
    action: ReviewAction,
    before: dict[str, Any],
    reason: str | None,
    batch_id: int | None = None,
) -> ReviewEvent:
    session.flush()  # bumps item.version
    event = ReviewEvent(
        item_id=item.id,
        curator=curator,
        action=action,
        before=before,
        after=snapshot(item, current_generation(session, item)),
        reason=(reason or "").strip() or None,
        batch_id=batch_id,
    )
    session.add(event)
    session.flush()
    return event


def _result(item: Item, event: ReviewEvent, run_id: int | None = None) -> ReviewResult:
    return ReviewResult(
        item_id=item.id,
        action=event.action,
        status=item.status,
        version=item.version,
        event_id=event.id,
        generation_id=item.current_generation_id,
        run_id=run_id,
    )


def stale_conflict(item_id: int) -> ConflictError:
    return ConflictError(
        f"item {item_id} was changed by someone else while your action was being saved; "
        "the fresh version is shown, check it and repeat your action if it still applies"
    )


# ---------------------------------------------------------------- decisions


def _decide(
    database: Database,
    item_id: int,
    *,
    curator: str,
    expected_version: int,
    status: ItemStatus,
    action: ReviewAction,
    reason: str | None,
) -> ReviewResult:
    name = clean_curator(curator)
    try:
        with database.write() as session:
            item = _locked_item(session, item_id, expected_version)
            if item.status not in DECIDABLE or item.current_generation_id is None:
                why = _WHY_NOT_DECIDABLE.get(item.status, "it has no generated content")
                raise ValidationError(f"item {item_id} cannot be {status.value}: {why}")
            before = snapshot(item, current_generation(session, item))
            item.status = status
            item.updated_at = utcnow()
            event = record_event(
                session, item, curator=name, action=action, before=before, reason=reason
            )
            return _result(item, event)
    except StaleDataError:
        raise stale_conflict(item_id) from None


def accept(
    database: Database,
    item_id: int,
    *,
    curator: str,
    expected_version: int,
    reason: str | None = None,
) -> ReviewResult:
    """Mark a generated item accepted (also turns a rejection around)."""
    return _decide(database, item_id, curator=curator, expected_version=expected_version,
                   status=ItemStatus.ACCEPTED, action=ReviewAction.ACCEPT, reason=reason)


def reject(
    database: Database,
    item_id: int,
    *,
    curator: str,
    expected_version: int,
    reason: str | None = None,
) -> ReviewResult:
    """Mark a generated item rejected; it stays in the database but leaves default exports."""
    return _decide(database, item_id, curator=curator, expected_version=expected_version,
                   status=ItemStatus.REJECTED, action=ReviewAction.REJECT, reason=reason)


# ---------------------------------------------------------------- new content


def _new_seed() -> int:
    return random.SystemRandom().getrandbits(SEED_BITS)


def _shuffle(correct: str, distractors: Sequence[str], seed: int) -> tuple[dict[str, str], str]:
    from vqa_engine.generator import shuffle_options

    options, letter = shuffle_options(correct, list(distractors), seed)
    return dict(options), letter


def options_with_answer_at(
    answer: str, distractors: Sequence[str], letter: str
) -> dict[str, str]:
    """Answer at `letter`, distractors in the given order in the other letters."""
    count = len(distractors) + 1
    others = iter(distractors)
    return {
        option_letter: answer if option_letter == letter else next(others)
        for option_letter in LETTERS[:count]
    }


def option_parts(
    generation: Generation | None,
) -> tuple[str | None, list[str], dict[str, str], str | None]:
    """(answer, distractors in letter order, options, correct letter) of a generation."""
    if generation is None:
        return None, [], {}, None
    options = {k: str(v) for k, v in (generation.options or {}).items()}
    letter = generation.correct_letter
    if options and letter in options:
        distractors = [text for key, text in options.items() if key != letter]
        return options[letter], distractors, options, letter
    return generation.answer, [str(d) for d in generation.distractors or []], options, letter


@dataclass(frozen=True)
class _Content:
    answer: str
    distractors: list[str]
    options: dict[str, str]
    correct_letter: str | None
    seed: int | None


def _multiple_choice_content(
    current: Generation | None,
    *,
    answer: str | None,
    distractors: Sequence[str] | None,
    options: Mapping[str, str] | None,
    correct_letter: str | None,
) -> _Content:
    old_answer, old_distractors, old_options, old_letter = option_parts(current)
    letter = correct_letter.strip().upper() if correct_letter else None
    if options is not None:
        cleaned = {str(k).strip().upper(): str(v).strip() for k, v in options.items()}
        cleaned = dict(sorted(cleaned.items()))
        if letter is None and answer is not None:
            letter = next(
                (k for k, v in cleaned.items() if comparable(v) == comparable(answer)), None
            )
        letter = letter or old_letter
        if letter is None:
            raise ValidationError("say which option is correct: pick a correct letter")
        validate_options(cleaned, letter)
        if answer is not None and comparable(answer) != comparable(cleaned[letter]):
            raise ValidationError(
                f"the answer {_quoted(answer.strip())} is not option {letter} "
                f"({_quoted(cleaned[letter])}); make them agree or leave the answer out"
            )
        others = [text for key, text in cleaned.items() if key != letter]
        return _Content(cleaned[letter], others, cleaned, letter, None)

    new_answer = (answer if answer is not None else old_answer or "").strip()
    if not new_answer:
        raise ValidationError("the answer is empty; type the correct answer")
    if distractors is None:
        new_distractors = list(old_distractors)
        if letter is None and old_options and old_letter in old_options:
            kept = dict(old_options)
            kept[old_letter] = new_answer
            validate_options(kept, old_letter)
            return _Content(new_answer, new_distractors, kept, old_letter, current.shuffle_seed
                            if current else None)
    else:
        new_distractors = [str(d).strip() for d in distractors]
    count = len(new_distractors) + 1
    if count > len(LETTERS):
        raise ValidationError(f"{count} options is too many; use at most {len(LETTERS)}")
    seed: int | None = None
    if letter is None and old_letter and old_letter in LETTERS[:count]:
        letter = old_letter
    if letter is None:
        _check_texts(new_answer, new_distractors)
        seed = _new_seed()
        shuffled, letter = _shuffle(new_answer, new_distractors, seed)
        validate_options(shuffled, letter)
        return _Content(new_answer, new_distractors, shuffled, letter, seed)
    if letter not in LETTERS[:count]:
        raise ValidationError(
            f"correct letter {letter!r} is not one of the options; pick one of "
            f"{', '.join(LETTERS[:count])}"
        )
    arranged = options_with_answer_at(new_answer, new_distractors, letter)
    validate_options(arranged, letter)
    return _Content(new_answer, new_distractors, arranged, letter, seed)


def _check_texts(answer: str, distractors: Sequence[str]) -> None:
    """Validate before shuffling, naming the letters the texts would get unshuffled."""
    validate_options(options_with_answer_at(answer, distractors, "A"), "A")


def edit(
    database: Database,
    item_id: int,
    *,
    curator: str,
    expected_version: int,
    answer: str | None = None,
    distractors: Sequence[str] | None = None,
    options: Mapping[str, str] | None = None,
    correct_letter: str | None = None,
    explanation: str | None = None,
    reason: str | None = None,
) -> ReviewResult:
    """Save a curator's correction as a new current generation (source EDIT).

    Multiple choice, either:
    - `options` ({"A": ..., "B": ...}) with `correct_letter` (or an `answer` matching one);
    - or `answer` and/or `distractors`: distractors fill the letters other than the
      correct one in the given order; the correct letter is `correct_letter`, else the
      current one, else a fresh recorded shuffle.
    Fill-in-blank: `answer` only. `None` keeps a field as it is; `explanation=""` clears it.
    The decision (accepted / rejected / generated) is kept; a pending or failed item
    becomes generated.
    """
    name = clean_curator(curator)
    try:
        with database.write() as session:
            item = _locked_item(session, item_id, expected_version)
            if item.status not in EDITABLE:
                raise ValidationError(
                    f"item {item_id} cannot be edited: {_WHY_NOT_DECIDABLE[item.status]}"
                )
            current = current_generation(session, item)
            before = snapshot(item, current)
            if item.question_type is QuestionType.MULTIPLE_CHOICE:
                content = _multiple_choice_content(
                    current, answer=answer, distractors=distractors, options=options,
                    correct_letter=correct_letter,
                )
                full_question = compose_full_question(item.question, content.options)
            else:
                if options or distractors or correct_letter:
                    raise ValidationError(
                        f"item {item_id} is fill-in-blank: it has no options; "
                        "edit only the answer and the explanation"
                    )
                text = (answer if answer is not None else (current.answer if current else ""))
                text = (text or "").strip()
                if not text:
                    raise ValidationError("the answer is empty; type the correct answer")
                content = _Content(text, [], {}, None, None)
                full_question = item.question
            old_explanation = current.explanation if current else None
            new_explanation = (
                old_explanation if explanation is None else (explanation.strip() or None)
            )
            unchanged = current is not None and (
                content.answer == current.answer
                and content.options == dict(current.options or {})
                and content.correct_letter == current.correct_letter
                and new_explanation == old_explanation
            )
            if unchanged:
                raise ValidationError(
                    "the edit changes nothing; change the answer, an option, the correct "
                    "letter or the explanation"
                )
            generation = Generation(
                item_id=item.id,
                source=GenerationSource.EDIT,
                ok=True,
                answer=content.answer,
                explanation=new_explanation,
                distractors=content.distractors,
                options=content.options,
                correct_letter=content.correct_letter,
                shuffle_seed=content.seed,
                full_question=full_question,
                model=current.model if current else None,
                prompt_version=current.prompt_version if current else None,
                quality_flags=check_generation(
                    item.question_type, content.answer, content.options, content.correct_letter,
                    new_explanation, expected_options=None, answer_method=None,
                    distractor_method=None,
                ),
            )
            session.add(generation)
            session.flush()
            item.current_generation_id = generation.id
            if item.status in (ItemStatus.PENDING, ItemStatus.FAILED):
                item.status = ItemStatus.GENERATED
                item.last_error = None
            item.updated_at = utcnow()
            event = record_event(session, item, curator=name, action=ReviewAction.EDIT,
                            before=before, reason=reason)
            return _result(item, event)
    except StaleDataError:
        raise stale_conflict(item_id) from None


def _reordered_flags(
    current: Generation, answer: str, options: Mapping[str, str], letter: str
) -> dict[str, Any]:
    """The current flags with every letter they name moved to the new order."""
    old_letters = {comparable(str(text)): key for key, text in (current.options or {}).items()}
    moved = {old_letters[comparable(text)]: key for key, text in options.items()
             if comparable(text) in old_letters}
    flags = relabel_check_flags(current.quality_flags or {}, moved)
    fresh = check_generation(
        QuestionType.MULTIPLE_CHOICE, answer, dict(options), letter, current.explanation,
        expected_options=None, answer_method=None, distractor_method=None,
    )
    for name in LETTERED_FLAGS:
        flags.pop(name, None)
        if name in fresh:
            flags[name] = fresh[name]
    return flags


def add_reordered_generation(
    session: Session,
    item: Item,
    current: Generation,
    *,
    answer: str,
    distractors: Sequence[str],
    options: dict[str, str],
    letter: str,
    seed: int | None,
) -> Generation:
    """Make a RESHUFFLE generation (same texts, new order) the item's current one."""
    generation = Generation(
        item_id=item.id,
        source=GenerationSource.RESHUFFLE,
        ok=True,
        answer=answer,
        explanation=current.explanation,
        distractors=list(distractors),
        options=options,
        correct_letter=letter,
        shuffle_seed=seed,
        full_question=compose_full_question(item.question, options),
        model=current.model,
        prompt_version=current.prompt_version,
        quality_flags=_reordered_flags(current, answer, options, letter),
    )
    session.add(generation)
    session.flush()
    item.current_generation_id = generation.id
    item.updated_at = utcnow()
    return generation


def new_order(
    answer: str, distractors: Sequence[str], old_options: Mapping[str, str]
) -> tuple[dict[str, str], str, int]:
    """A fresh recorded shuffle that differs from the current order whenever it can."""
    seed = _new_seed()
    options, letter = _shuffle(answer, distractors, seed)
    for _ in range(RESHUFFLE_ATTEMPTS):
        if list(options.values()) != list(old_options.values()):
            break
        seed = _new_seed()
        options, letter = _shuffle(answer, distractors, seed)
    return options, letter, seed


def reshuffle(
    database: Database,
    item_id: int,
    *,
    curator: str,
    expected_version: int,
    reason: str | None = None,
) -> ReviewResult:
    """Same texts, new option order from a new recorded seed (source RESHUFFLE)."""
    name = clean_curator(curator)
    try:
        with database.write() as session:
            item = _locked_item(session, item_id, expected_version)
            if item.question_type is not QuestionType.MULTIPLE_CHOICE:
                raise ValidationError(
                    f"item {item_id} is fill-in-blank: it has no options to reshuffle"
                )
            if item.status not in DECIDABLE:
                raise ValidationError(
                    f"item {item_id} cannot be reshuffled: {_WHY_NOT_DECIDABLE[item.status]}"
                )
            current = current_generation(session, item)
            answer, distractors, old_options, _ = option_parts(current)
            if current is None or not answer or not distractors:
                raise ValidationError(
                    f"item {item_id} has no options to reshuffle; regenerate or edit it first"
                )
            before = snapshot(item, current)
            options, letter, seed = new_order(answer, distractors, old_options)
            add_reordered_generation(session, item, current, answer=answer,
                                     distractors=distractors, options=options, letter=letter,
                                     seed=seed)
            event = record_event(session, item, curator=name, action=ReviewAction.RESHUFFLE,
                            before=before, reason=reason)
            return _result(item, event)
    except StaleDataError:
        raise stale_conflict(item_id) from None


def regenerate(
    database: Database,
    item_id: int,
    *,
    curator: str,
    expected_version: int,
    endpoint: Endpoint,
    scope: RegenerateScope = RegenerateScope.WHOLE,
    reason: str | None = None,
    settings: RunSettings | None = None,
) -> ReviewResult:
    """Ask the engine for a new generation; returns at once, the engine does the work.

    The item is claimed first (its version bumped under the lock, so a concurrent action
    on the old version is refused), then `runs.request_regeneration` queues it. The event
    records the state before, and after the request the queued state with its run.
    """
    name = clean_curator(curator)
    scope = RegenerateScope(scope)
    cleaned_reason = (reason or "").strip() or None
    try:
        with database.write() as session:
            item = _locked_item(session, item_id, expected_version)
            if item.status not in REGENERATABLE:
                why = {
                    ItemStatus.PENDING: "it is already waiting to be generated",
                    ItemStatus.GENERATING: "a run is generating it right now",
                }[item.status]
                raise ValidationError(f"item {item_id} cannot be regenerated: {why}")
            current = current_generation(session, item)
            if scope is RegenerateScope.DISTRACTORS:
                if item.question_type is not QuestionType.MULTIPLE_CHOICE:
                    raise ValidationError(
                        f"item {item_id} is fill-in-blank: it has no distractors; "
                        "regenerate the whole item"
                    )
                if current is None or not current.answer:
                    raise ValidationError(
                        f"item {item_id} has no answer to keep; regenerate the whole item"
                    )
            before = snapshot(item, current)
            item.updated_at = utcnow()
            event = record_event(session, item, curator=name, action=ReviewAction.REGENERATE,
                            before=before, reason=cleaned_reason)
            event.after = {**event.after, "scope": scope.value, "requested": True}
            event_id = event.id
    except StaleDataError:
        raise stale_conflict(item_id) from None

    from vqa_engine.runs import request_regeneration

    try:
        run_id = request_regeneration(
            database, [item_id], scope=scope, reason=cleaned_reason, endpoint=endpoint,
            **({"settings": settings} if settings is not None else {}),
        )
    except Exception as exc:
        # Only our own messages are stored: an HTTP library's repr may carry credentials.
        cause = f"{type(exc).__name__}: {exc}" if isinstance(exc, VQAError) else type(exc).__name__
        with database.write() as session:
            failed = session.get_one(ReviewEvent, event_id)
            failed.after = {**failed.after, "requested": False, "error": cause}
        raise
    with database.write() as session:
        item = session.get_one(Item, item_id)
        event = session.get_one(ReviewEvent, event_id)
        event.after = {**snapshot(item, current_generation(session, item)), "scope": scope.value,
                       "requested": True, "run_id": run_id}
        return _result(item, event, run_id)


# ---------------------------------------------------------------- undo

_PAST = {
    ReviewAction.ACCEPT: "accepted",
    ReviewAction.REJECT: "rejected",
    ReviewAction.EDIT: "edited",
    ReviewAction.REGENERATE: "regenerated",
    ReviewAction.RESHUFFLE: "reshuffled",
    ReviewAction.UNDO: "undone",
}


def _counts_as_later(event: ReviewEvent) -> bool:
    """A later event blocks an undo unless it is an undo, was undone, or changed nothing
    (a regeneration whose request failed)."""
    if event.action is ReviewAction.UNDO or event.undone_by is not None:
        return False
    return not (event.action is ReviewAction.REGENERATE
                and (event.after or {}).get("requested") is False)


def later_events(session: Session, events: Sequence[ReviewEvent]) -> dict[int, ReviewEvent]:
    """For each event's item, the newest standing event made after it: {item_id: event}."""
    if not events:
        return {}
    since = {event.item_id: event.id for event in events}
    found: dict[int, ReviewEvent] = {}
    item_ids = list(since)
    for start in range(0, len(item_ids), 500):
        chunk = item_ids[start : start + 500]
        candidates = session.scalars(
            select(ReviewEvent)
            .where(ReviewEvent.item_id.in_(chunk), ReviewEvent.id > min(since[i] for i in chunk),
                   ReviewEvent.action != ReviewAction.UNDO, ReviewEvent.undone_by.is_(None))
            .order_by(ReviewEvent.id)
        )
        for candidate in candidates:
            if candidate.id > since[candidate.item_id] and _counts_as_later(candidate):
                found[candidate.item_id] = candidate
    return found


def _regeneration_blocker(session: Session, event: ReviewEvent, item: Item) -> str | None:
    after = event.after or {}
    run_id = after.get("run_id")
    if item.run_id != run_id:
        return (f"item {item.id} was queued again by run {item.run_id} after this "
                "regeneration; decide or edit the item instead")
    if item.status in (ItemStatus.PENDING, ItemStatus.GENERATING):
        run = session.get(Run, run_id) if run_id is not None else None
        if run is not None and run.status is RunStatus.CANCELLED and (
            item.current_generation_id == after.get("current_generation_id")
        ):
            return None
        return (f"the regeneration of item {item.id} has not landed yet (it is "
                f"{item.status.value} in run {run_id}); wait for it, or cancel the run")
    if item.status is ItemStatus.FAILED:
        if item.current_generation_id == after.get("current_generation_id"):
            return None
    elif item.status is ItemStatus.GENERATED:
        generation = current_generation(session, item)
        if (generation is not None and generation.source is GenerationSource.MODEL
                and generation.run_id == run_id
                and generation.id > (after.get("current_generation_id") or 0)):
            return None
    return (f"item {item.id} was changed at {_when(item.updated_at)} after this regeneration "
            f"(it is now {item.status.value}); decide or edit the item instead")


def undo_blocker(
    session: Session, event: ReviewEvent, item: Item, later: ReviewEvent | None
) -> str | None:
    """Why `event` cannot be undone now (a sentence naming what to do), or None if it can."""
    action = event.action.value
    if event.action is ReviewAction.UNDO:
        return "this is itself an undo; to have its change back, use the action again"
    if event.undone_by is not None:
        return f"this {action} was already undone (event {event.undone_by})"
    if later is not None:
        return (f"item {item.id} was {_PAST[later.action]} by {later.curator} at "
                f"{_when(later.created_at)} after this {action}; undo that first")
    after = event.after or {}
    if event.action is ReviewAction.REGENERATE and after.get("run_id") is not None:
        return _regeneration_blocker(session, event, item)
    if (item.status.value, item.current_generation_id) != (
        after.get("status"), after.get("current_generation_id")
    ):
        return (f"item {item.id} was changed by a generation run at {_when(item.updated_at)} "
                f"after this {action} (it is now {item.status.value}); decide or edit the "
                "item instead")
    return None


def _last_failure(session: Session, item_id: int) -> str | None:
    failed = session.scalars(
        select(Generation)
        .where(Generation.item_id == item_id, Generation.ok.is_(False))
        .order_by(Generation.id.desc())
        .limit(1)
    ).first()
    if failed is None:
        return None
    return f"{failed.error_step}: {failed.error_message}" if failed.error_step else (
        failed.error_message or "failed")


def restore(
    session: Session, item: Item, event: ReviewEvent, *, curator: str
) -> ReviewEvent:
    """Put the item back to `event.before` and record the UNDO (checks are the caller's)."""
    return restore_many(session, [(item, event)], curator=curator)[0]


def restore_many(
    session: Session, pairs: Sequence[tuple[Item, ReviewEvent]], *, curator: str
) -> list[ReviewEvent]:
    """`restore` for many items with two flushes in all, not two per item."""
    befores = []
    for item, event in pairs:
        befores.append(snapshot(item, current_generation(session, item)))
        target = event.before or {}
        item.status = ItemStatus(target["status"])
        item.current_generation_id = target.get("current_generation_id")
        if item.status is ItemStatus.FAILED:
            item.last_error = item.last_error or _last_failure(session, item.id)
        else:
            item.last_error = None
        item.updated_at = utcnow()
    session.flush()  # bumps every item's version
    undo_events = [
        ReviewEvent(
            item_id=item.id, curator=curator, action=ReviewAction.UNDO, before=before,
            after={**snapshot(item, current_generation(session, item)), "undoes": event.id},
            reason=f"undo of {event.action.value} (event {event.id}) by {event.curator}",
        )
        for (item, event), before in zip(pairs, befores)
    ]
    session.add_all(undo_events)
    session.flush()
    for (_item, event), undo_event in zip(pairs, undo_events):
        event.undone_by = undo_event.id
    return undo_events


def undo(database: Database, event_id: int, *, curator: str) -> ReviewResult:
    """Take back one review event: the item's status and current generation become the
    event's `before` again. Generations are never deleted, so this is exact.

    Allowed only while nothing happened to the item since the event:
    - no later standing event (one not itself undone; undos and regeneration requests that
      failed do not count); undo later events first, newest first;
    - the item's status and current generation are still those the event left (so a
      generation run that re-queued, regenerated or failed the item since is noticed even
      though it writes no event);
    - a regeneration: the item still belongs to the event's run and is no longer pending or
      generating (or its run was cancelled before it got to it), and its current generation
      is that run's new model generation, or, if it failed, still the old one.
    An undo cannot be undone (use the action again) and an event is undone at most once.
    Undo writes its own UNDO event (state before and after, `undoes` the event's id) and
    sets the undone event's `undone_by`; a refusal is a `ConflictError` saying why.
    """
    name = clean_curator(curator)
    try:
        with database.write() as session:
            event = session.scalar(
                select(ReviewEvent).where(ReviewEvent.id == event_id).with_for_update()
            )
            if event is None:
                raise ValidationError(
                    f"review event {event_id} does not exist; reload the item's history"
                )
            item = session.scalar(select(Item).where(Item.id == event.item_id).with_for_update())
            if item is None:
                raise ConflictError(f"item {event.item_id} no longer exists; nothing to undo")
            later = later_events(session, [event]).get(item.id)
            blocker = undo_blocker(session, event, item, later)
            if blocker is not None:
                raise ConflictError(
                    f"cannot undo the {event.action.value} of item {item.id} by {event.curator} "
                    f"at {_when(event.created_at)}: {blocker}"
                )
            undo_event = restore(session, item, event, curator=name)
            return _result(item, undo_event)
    except StaleDataError:
        raise stale_conflict(event_id) from None


def undo_blockers(session: Session, item_id: int) -> dict[int, str | None]:
    """For each of an item's review events, why it cannot be undone (None: it can)."""
    item = session.get(Item, item_id)
    if item is None:
        return {}
    events = list(session.scalars(
        select(ReviewEvent).where(ReviewEvent.item_id == item_id).order_by(ReviewEvent.id)
    ))
    standing = [e for e in events if _counts_as_later(e)]
    blockers: dict[int, str | None] = {}
    for event in events:
        later = next((e for e in reversed(standing) if e.id > event.id), None)
        blockers[event.id] = undo_blocker(session, event, item, later)
    return blockers


# ---------------------------------------------------------------- history

_TRACKED = ("status", "answer", "options", "correct_letter", "explanation",
            "current_generation_id")


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[Change, ...]:
    return tuple(
        Change(name, before.get(name), after.get(name))
        for name in _TRACKED
        if name in after and before.get(name) != after.get(name)
    )


def _generation_summary(generation: Generation) -> str:
    if not generation.ok:
        where = f" at {generation.error_step}" if generation.error_step else ""
        return f"failed ({generation.error_type or 'error'}{where}): {generation.error_message}"
    if generation.correct_letter:
        return f"answer {_quoted(generation.answer or '')}, correct {generation.correct_letter}"
    return f"answer {_quoted(generation.answer or '')}"


def history(session: Session, item_id: int) -> list[HistoryEntry]:
    """Model generations and curator actions of an item, newest first.

    Edits and reshuffles appear once, as the curator's action (their generation is in
    `generation_id`).
    """
    entries: list[HistoryEntry] = []
    for generation in session.scalars(
        select(Generation)
        .where(Generation.item_id == item_id, Generation.source == GenerationSource.MODEL)
        .order_by(Generation.id)
    ):
        entries.append(
            HistoryEntry(
                at=generation.created_at,
                kind="generation",
                actor=generation.model or "model",
                action="generate" if generation.ok else "generate failed",
                summary=_generation_summary(generation),
                generation_id=generation.id,
            )
        )
    for event in session.scalars(
        select(ReviewEvent).where(ReviewEvent.item_id == item_id).order_by(ReviewEvent.id)
    ):
        after = event.after or {}
        summary = event.action.value
        if after.get("error"):
            summary += f" (request failed: {after['error']})"
        elif after.get("scope"):
            summary += f" ({after['scope']})"
        if event.action is ReviewAction.UNDO and after.get("undoes"):
            summary += f" of event {after['undoes']}"
        if event.undone_by is not None:
            summary += " (undone)"
        entries.append(
            HistoryEntry(
                at=event.created_at,
                kind="review",
                actor=event.curator,
                action=event.action.value,
                summary=summary,
                changes=_changes(event.before or {}, after),
                reason=event.reason,
                generation_id=after.get("current_generation_id"),
                event_id=event.id,
            )
        )
    entries.sort(
        key=lambda e: (_aware(e.at), e.kind == "review", e.event_id or e.generation_id or 0),
        reverse=True,
    )
    return entries
