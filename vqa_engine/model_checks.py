"""Model-based checks of a finished multiple-choice item: blind and circular.

Rule-based flags (`vqa_engine.quality`) read the text; these ask the model again.

- Blind: the question and its lettered options, with NO image. A model that still picks the
  recorded correct letter did not need to look: the item is flagged `blind_answerable`
  (one request). A lucky guess flags too, at a rate of one in the option count; the flag
  asks for a look, it rejects nothing.
- Circular: the question with the image, asked once per option position, the options
  rotated each time (rotation k puts option i at position (i + k) mod n). Each pick is
  mapped back to the original letter; picks that move between rotations, or that differ
  from the recorded letter, flag `circular_inconsistent` (n requests). A stable, correct
  pick in every position is the model agreeing with the item for its content, not for a
  position.

A check that cannot conclude (a request failed after the client's retries, or the model's
reply named no letter) never fails the item: it is recorded as the flag `check_incomplete`,
whose reason says which check and why, so the curator knows the item was not vouched for.
Rotations that did answer and already disagree still flag `circular_inconsistent`.

Checks are sent at temperature 0: the question is the model's most likely pick, not a
sample. Their prompts are fixed (`prompts.check_prompt`, version `CHECK_PROMPT_VERSION`,
stored with each check flag) so that a dataset's edited generation wording does not change
what a check asks.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vqa_engine.errors import FormatError
from vqa_engine.parsing import clean_value, json_candidates, lookup_key, prepare_text, scalar_text
from vqa_engine.prompts import CHECK_PROMPT_VERSION, check_prompt
from vqa_engine.quality import normalise

BLIND_ANSWERABLE = "blind_answerable"
CIRCULAR_INCONSISTENT = "circular_inconsistent"
CHECK_INCOMPLETE = "check_incomplete"
CHECK_FLAGS: tuple[str, ...] = (BLIND_ANSWERABLE, CIRCULAR_INCONSISTENT, CHECK_INCOMPLETE)

BLIND = "blind"
CIRCULAR = "circular"
CHECK_ROLE = "check"  # ledger role of check requests, beside ledger.Role.ANSWER / DISTRACTORS
CHECK_TEMPERATURE = 0.0

CHOICE_KEYS = ("choice", "answer", "letter", "option", "correct_option", "final_answer",
               "选项", "答案", "正确答案", "选择")


@dataclass(frozen=True)
class ModelChecks:
    """Which model-based checks a run asks for; both off by default (they cost requests)."""

    blind: bool = False
    circular: bool = False

    @property
    def any(self) -> bool:
        return self.blind or self.circular

    def extra_requests(self, option_count: int) -> int:
        """Requests the checks add to one multiple-choice item with `option_count` options."""
        return int(self.blind) + (option_count if self.circular else 0)


NO_CHECKS = ModelChecks()


# ---------------------------------------------------------------- rotation


def rotate_options(options: Mapping[str, str], rotation: int) -> dict[str, str]:
    """The options with option i moved to position (i + rotation) mod n, relettered A, B..."""
    letters = list(options)
    texts = list(options.values())
    count = len(texts)
    if count == 0:
        return {}
    return {letters[position]: texts[(position - rotation) % count]
            for position in range(count)}


def original_letter(letters: Sequence[str], picked: str, rotation: int) -> str:
    """The original letter of the option shown at `picked` under `rotation`."""
    position = list(letters).index(picked)
    return letters[(position - rotation) % len(letters)]


# ---------------------------------------------------------------- what to ask


@dataclass(frozen=True)
class CheckAsk:
    """One check request: which check, the rotation shown, the prompt, whether to send the
    image."""

    kind: str
    rotation: int
    prompt: str
    with_image: bool


def check_asks(checks: ModelChecks, question: str, options: Mapping[str, str]
               ) -> list[CheckAsk]:
    """Every request the enabled checks send for one finished item, in a fixed order."""
    asks: list[CheckAsk] = []
    if checks.blind:
        asks.append(CheckAsk(BLIND, 0, check_prompt(question, options, blind=True), False))
    if checks.circular:
        for rotation in range(len(options)):
            shown = rotate_options(options, rotation)
            asks.append(CheckAsk(CIRCULAR, rotation, check_prompt(question, shown, blind=False),
                                 True))
    return asks


# ---------------------------------------------------------------- reading the pick


@dataclass(frozen=True)
class ParsedChoice:
    letter: str
    method: str


_LETTER_ONLY = re.compile(r"^[\[(（【]?\s*([A-Z])\s*[\])）】]?\s*[.。:：,，、)]?$")
_LEADING_LETTER = re.compile(r"^[\[(（【]?([A-Z])(?:[\])）】]|[.．:：、,，]|\s*$|\s+[-–—]\s)")
_LABELLED = re.compile(
    r"(?i:\b(?:final answer|correct answer|correct option|correct choice|answer|choice|option)"
    r"|正确答案|最终答案|答案|选项|选择|应选|选)"
    r"(?i:\s*(?:is|would be|should be|:|：|是|为|应为|应该是)\s*)*"
    r"[\s*_\"'“‘]*[\[(（【]?\s*([A-Z])(?![A-Za-z])")
_ANSWER_TEXT = re.compile(
    r"(?i:\b(?:answer|choice|option)\s*(?:is|would be|should be|:)|答案\s*(?:是|为|：|:))"
    r"\s*(.+?)\s*$", re.MULTILINE)
_STANDALONE = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z'’])")
_ARTICLE = re.compile(r"\s+(?!is\b|was\b|or\b|and\b)[a-z]")  # "A red car", "I think": words, not picks


def _letter_of(value: str, letters: Sequence[str], options: Mapping[str, str]) -> str | None:
    text = unicodedata.normalize("NFKC", clean_value(value)).strip()
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    for pattern in (_LETTER_ONLY, _LEADING_LETTER):
        match = pattern.match(text)
        if match is not None and match.group(1) in letters:
            return match.group(1)
    wanted = normalise(text)
    if wanted:
        same = [letter for letter, option in options.items() if normalise(option) == wanted]
        if len(same) == 1:
            return same[0]
    return None


def _labelled(text: str, letters: Sequence[str], options: Mapping[str, str]) -> str | None:
    found = [m.group(1) for m in _LABELLED.finditer(text) if m.group(1) in letters]
    if found:
        return found[-1]
    named = [_letter_of(m.group(1), letters, options) for m in _ANSWER_TEXT.finditer(text)]
    named = [letter for letter in named if letter is not None]
    return named[-1] if named else None


def _mentioned(text: str, letters: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for match in _STANDALONE.finditer(text):
        letter = match.group(1)
        if letter in ("A", "I") and _ARTICLE.match(text, match.end()):
            continue
        found.add(letter)
    return found & set(letters)


def _json_choice(text: str, letters: Sequence[str], options: Mapping[str, str]
                 ) -> tuple[str | None, bool]:
    """(letter, whether JSON with a choice key was found at all)."""
    for value, _method in json_candidates(text):
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
            value = value[0]
        if not isinstance(value, dict):
            continue
        found, choice = lookup_key(value, CHOICE_KEYS)
        if not found:
            continue
        scalar = scalar_text(choice)
        return (_letter_of(scalar, letters, options) if scalar is not None else None), True
    return None, False


def _unreadable(text: str, letters: Sequence[str]) -> FormatError:
    shown = " ".join(str(text).split())
    preview = f"the text began {shown[:80]!r}" if shown else "the text was empty"
    return FormatError(
        f"the model named no option letter {letters[0]}-{letters[-1]} ({preview}); the check "
        "counts as not done", raw=str(text))


def parse_choice(text: str, options: Mapping[str, str]) -> ParsedChoice:
    """The option letter a model picked: `B`, `B.`, `(B) red`, `The answer is (B)`,
    `{"choice": "B"}`, `{"answer": "B"}`, `答案：B`, or the exact text of one option.
    `FormatError(raw=text)` when no single letter of `options` can be read."""
    letters = list(options)
    if not letters:
        raise FormatError("no options to choose from; the check counts as not done",
                          raw=str(text))
    prepared = unicodedata.normalize("NFKC", prepare_text(text))
    letter, had_json = _json_choice(prepared, letters, options)
    if letter is not None:
        return ParsedChoice(letter, "json")
    if had_json:
        raise _unreadable(text, letters)
    lines = [line.strip() for line in prepared.splitlines() if line.strip()]
    if lines and (letter := _letter_of(lines[0], letters, options)) is not None \
            and len(lines) == 1:
        return ParsedChoice(letter, "letter")
    if (letter := _labelled(prepared, letters, options)) is not None:
        return ParsedChoice(letter, "labelled")
    if lines and (letter := _letter_of(lines[0], letters, options)) is not None:
        return ParsedChoice(letter, "letter")
    if lines and (letter := _letter_of(lines[-1], letters, options)) is not None:
        return ParsedChoice(letter, "letter")
    mentioned = _mentioned(prepared, letters)
    if len(mentioned) == 1:
        return ParsedChoice(mentioned.pop(), "mentioned")
    raise _unreadable(text, letters)


# ---------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class CheckAnswer:
    """The outcome of one check request: the original letter picked, or why there is none."""

    kind: str
    rotation: int
    letter: str | None = None  # mapped back to the item's own lettering
    problem: str | None = None  # one line, when no letter was obtained


def _flag(reason: str, **facts: Any) -> dict[str, Any]:
    return {"reason": reason, "prompt_version": CHECK_PROMPT_VERSION, **facts}


def _blind_reason(letter: str) -> str:
    return f"answered {letter} correctly without the image"


def _circular_reason(picks: Sequence[str], recorded: str) -> str:
    return f"picked {', '.join(picks)} over {len(picks)} rotations; recorded answer is {recorded}"


def judge(answers: Sequence[CheckAnswer], correct_letter: str, option_count: int
          ) -> dict[str, dict[str, str]]:
    """Quality flags from the check answers of one item (empty when every check passed)."""
    flags: dict[str, dict[str, str]] = {}
    incomplete: list[str] = []
    blind = [a for a in answers if a.kind == BLIND]
    for answer in blind:
        if answer.letter is None:
            incomplete.append(f"blind check not done ({answer.problem})")
        elif answer.letter == correct_letter:
            flags[BLIND_ANSWERABLE] = _flag(_blind_reason(answer.letter), letter=answer.letter)
    circular = sorted((a for a in answers if a.kind == CIRCULAR), key=lambda a: a.rotation)
    if circular:
        picks = [a.letter for a in circular]
        known = [p for p in picks if p is not None]
        shown = [p or "?" for p in picks]
        if known and (len(set(known)) > 1 or known[0] != correct_letter):
            flags[CIRCULAR_INCONSISTENT] = _flag(
                _circular_reason(shown, correct_letter), picks=shown, recorded=correct_letter)
        elif len(known) < len(picks) or len(picks) < option_count:
            missing = [a for a in circular if a.letter is None]
            detail = missing[0].problem if missing else "not every rotation was asked"
            incomplete.append(
                f"circular check not done: {len(known)} of {option_count} rotations answered "
                f"({detail})")
    if incomplete:
        flags[CHECK_INCOMPLETE] = _flag("; ".join(incomplete))
    return flags


def relabel_check_flags(flags: Mapping[str, Any], moved: Mapping[str, str]) -> dict[str, Any]:
    """The same flags told in a new option order (`moved`: old letter -> new letter).

    A reshuffle or a letter balance keeps the texts, so the checks' verdicts still hold;
    only the letters their reasons name change.
    """
    result = dict(flags)
    blind = flags.get(BLIND_ANSWERABLE)
    if isinstance(blind, Mapping) and blind.get("letter") in moved:
        letter = moved[blind["letter"]]
        result[BLIND_ANSWERABLE] = {**blind, "letter": letter, "reason": _blind_reason(letter)}
    circular = flags.get(CIRCULAR_INCONSISTENT)
    if isinstance(circular, Mapping) and circular.get("recorded") in moved:
        picks = [moved.get(pick, pick) for pick in circular.get("picks", [])]
        recorded = moved[circular["recorded"]]
        result[CIRCULAR_INCONSISTENT] = {
            **circular, "picks": picks, "recorded": recorded,
            "reason": _circular_reason(picks, recorded),
        }
    return result


__all__ = [
    "BLIND_ANSWERABLE",
    "CHECK_FLAGS",
    "CHECK_INCOMPLETE",
    "CIRCULAR_INCONSISTENT",
    "CheckAnswer",
    "CheckAsk",
    "ModelChecks",
    "ParsedChoice",
    "check_asks",
    "judge",
    "original_letter",
    "parse_choice",
    "relabel_check_flags",
    "rotate_options",
]
