"""Rule-based quality flags for every model generation.

A curator cannot read every item closely; these cheap checks point at the items most likely
to be wrong: options that say the same thing twice, a distractor that is really the answer,
a correct option that gives itself away by being the only long one, refusals ("I cannot see
the image", "抱歉，无法..."), empty, overlong or cut-off answers, fewer options than were
asked for, and model output that only parsed through a fallback layout. The checks never
reject anything; they return `{flag: {"reason": "one line"}}`, stored on the generation,
shown on its card and usable as a filter.

Text is compared after normalisation: Unicode NFKC (full-width `ＡＢＣ１２` becomes `ABC12`),
case folding, punctuation dropped and whitespace collapsed. Two options are near-duplicates
when `difflib.SequenceMatcher(None, a, b).ratio()` on the normalised texts is at least
`QualityConfig.near_duplicate_ratio` (0.9 by default): "the red car" / "the red cars" (0.96)
are flagged, "red car" / "blue car" (0.67) are not.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from db.models import QuestionType
from vqa_engine.parsing import JSON_METHODS

DUPLICATE_OPTIONS = "duplicate_options"
DISTRACTOR_IS_ANSWER = "distractor_is_answer"
LENGTH_BIAS = "length_bias"
REFUSAL = "refusal"
EMPTY_ANSWER = "empty_answer"
OVERLONG_ANSWER = "overlong_answer"
TRUNCATED_ANSWER = "truncated_answer"
TOO_FEW_OPTIONS = "too_few_options"
PARSER_FALLBACK = "parser_fallback"

# Flags whose reasons name option letters: re-ordering the options restates them.
LETTERED_FLAGS: tuple[str, ...] = (DUPLICATE_OPTIONS, DISTRACTOR_IS_ANSWER, LENGTH_BIAS)
ALL_FLAGS: tuple[str, ...] = (
    DUPLICATE_OPTIONS, DISTRACTOR_IS_ANSWER, LENGTH_BIAS, REFUSAL, EMPTY_ANSWER,
    OVERLONG_ANSWER, TRUNCATED_ANSWER, TOO_FEW_OPTIONS, PARSER_FALLBACK,
)

@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the checks.

    near_duplicate_ratio: SequenceMatcher ratio (0..1) of two normalised options at or above
        which they count as duplicates; 0.9 catches plurals and typos of a phrase while
        leaving options that differ in one real word apart.
    max_answer_chars: a correct answer longer than this is flagged `overlong_answer`.
    length_bias_min_options: `length_bias` is only judged with at least this many options.
    """

    near_duplicate_ratio: float = 0.9
    max_answer_chars: int = 300
    length_bias_min_options: int = 3


DEFAULT_CONFIG = QualityConfig()

_REFUSAL_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"\bi(?:'| a)?m sorry\b",
    r"\bi am sorry\b",
    r"\bsorry,? (?:but )?i\b",
    r"\bi (?:cannot|can't|can not|am unable to|'m unable to|am not able to)\b",
    r"\bi'm not able to\b",
    r"\bunable to (?:see|view|access|determine|identify|open|process|analy[sz]e)\b",
    r"\b(?:can't|cannot|can not|could not|couldn't) (?:see|view|access|open) the (?:image|picture|photo)\b",
    r"\bno image (?:was |is )?(?:provided|attached|shown)\b",
    r"\bas an ai\b",
    r"无法",
    r"看不到",
    r"看不清",
    r"抱歉",
    r"对不起",
    r"不能(?:确定|识别|看到|回答)",
    r"没有(?:提供)?(?:图片|图像)",
))

_TRUNCATION_TAIL = re.compile(r"(?:\.\.\.|…|。。。)\s*$")


_DECIMAL_MARK = re.compile(r"(?<=\d)[.,](?=\d)")


def normalise(text: Any) -> str:
    """NFKC, case-folded, punctuation and symbols dropped, whitespace collapsed."""
    value = unicodedata.normalize("NFKC", "" if text is None else str(text)).casefold()
    value = _DECIMAL_MARK.sub("\x00", value)  # 3.5 stays one number
    kept = "".join(
        " " if unicodedata.category(ch)[0] in "PSZ" or ch.isspace() else ch for ch in value
    )
    return " ".join(kept.split()).replace("\x00", ".")


def _similarity(a: str, b: str) -> float:
    return SequenceMatcher(None, a, b).ratio()


_NUMBER_UNIT = re.compile(r"(-?\d+(?:[.,]\d+)?)\s*([^\W\d_]*)")


def _number_unit(text: str) -> tuple[float, str] | None:
    """`3 kg` / `3kg` / `3.0 kg` -> (3.0, "kg"); None when the text is not a bare quantity."""
    value = unicodedata.normalize("NFKC", text).strip().casefold().rstrip(".。")
    match = _NUMBER_UNIT.fullmatch(value)
    if match is None:
        return None
    try:
        number = float(match.group(1).replace(",", "."))
    except ValueError:
        return None
    return number, match.group(2)


def _short(text: str, limit: int = 40) -> str:
    shown = " ".join(str(text).split())
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def _duplicate_options(options: dict[str, str], config: QualityConfig) -> str | None:
    entries = [(letter, normalise(text)) for letter, text in options.items()]
    for index, (letter_a, a) in enumerate(entries):
        for letter_b, b in entries[index + 1:]:
            if not a or not b:
                continue
            if a == b:
                return f"options {letter_a} and {letter_b} are the same after normalisation"
            ratio = _similarity(a, b)
            if ratio >= config.near_duplicate_ratio:
                return (f"options {letter_a} and {letter_b} are near-duplicates "
                        f"(similarity {ratio:.2f} >= {config.near_duplicate_ratio})")
    return None


def _same_as_answer(answer: str, distractor: str) -> str | None:
    a, d = normalise(answer), normalise(distractor)
    if not a or not d:
        return None
    if a == d:
        return "equals the answer after normalisation"
    quantity_a, quantity_d = _number_unit(answer), _number_unit(distractor)
    if quantity_a is not None and quantity_a == quantity_d:
        return "is the same number and unit as the answer"
    if re.search(rf"(?<![\w.]){re.escape(a)}(?![\w.])", d):
        return "contains the answer"
    if re.search(rf"(?<![\w.]){re.escape(d)}(?![\w.])", a):
        return "is contained in the answer"
    return None


def _distractor_is_answer(options: dict[str, str], correct_letter: str | None,
                          answer: str) -> str | None:
    correct_text = options.get(correct_letter, answer) if correct_letter else answer
    for letter, text in options.items():
        if letter == correct_letter:
            continue
        found = _same_as_answer(correct_text, text)
        if found is not None:
            return f"option {letter} ({_short(text)!r}) {found}"
    return None


def _length_bias(options: dict[str, str], correct_letter: str | None,
                 config: QualityConfig) -> str | None:
    if correct_letter not in options or len(options) < config.length_bias_min_options:
        return None
    lengths = {letter: len(" ".join(text.split())) for letter, text in options.items()}
    longest = max(lengths.values())
    if lengths[correct_letter] != longest:
        return None
    if sum(1 for length in lengths.values() if length == longest) > 1:
        return None
    runner_up = max(length for letter, length in lengths.items() if letter != correct_letter)
    return (f"the correct option {correct_letter} is the only longest "
            f"({longest} characters, next {runner_up})")


def is_refusal(text: str) -> bool:
    """True for refusals and "I cannot see the image" answers, in English or Chinese."""
    value = unicodedata.normalize("NFKC", text or "").replace("’", "'")
    return any(pattern.search(value) for pattern in _REFUSAL_PATTERNS)


def _fallback(method: str | None) -> bool:
    return method is not None and method not in JSON_METHODS


def check_generation(
    question_type: QuestionType | str,
    answer: str | None,
    options: dict[str, str] | None,
    correct_letter: str | None,
    explanation: str | None,
    *,
    expected_options: int | None,
    answer_method: str | None,
    distractor_method: str | None,
    finish_reason: str | None = None,
    config: QualityConfig = DEFAULT_CONFIG,
) -> dict[str, dict[str, str]]:
    """The quality flags of one generation: `{flag: {"reason": "one line"}}`, empty if clean."""
    flags: dict[str, dict[str, str]] = {}
    answer_text = (answer or "").strip()
    options = dict(options or {})
    kind = question_type.value if isinstance(question_type, QuestionType) else str(question_type)
    multiple_choice = kind == QuestionType.MULTIPLE_CHOICE.value

    def flag(name: str, reason: str) -> None:
        flags[name] = {"reason": reason}

    if not normalise(answer_text):
        flag(EMPTY_ANSWER, "the answer is empty")
    elif len(answer_text) > config.max_answer_chars:
        flag(OVERLONG_ANSWER,
             f"the answer has {len(answer_text)} characters (limit {config.max_answer_chars})")
    if answer_text and is_refusal(answer_text):
        flag(REFUSAL, f"the answer reads as a refusal: {_short(answer_text)!r}")

    if finish_reason == "length":
        flag(TRUNCATED_ANSWER, "the model stopped at its token limit (finish_reason 'length')")
    elif answer_text and _TRUNCATION_TAIL.search(answer_text):
        flag(TRUNCATED_ANSWER, "the answer ends mid-sentence with '...'")
    elif explanation and _TRUNCATION_TAIL.search(explanation.strip()):
        flag(TRUNCATED_ANSWER, "the explanation ends mid-sentence with '...'")

    if multiple_choice:
        if (found := _duplicate_options(options, config)) is not None:
            flag(DUPLICATE_OPTIONS, found)
        if (found := _distractor_is_answer(options, correct_letter, answer_text)) is not None:
            flag(DISTRACTOR_IS_ANSWER, found)
        if (found := _length_bias(options, correct_letter, config)) is not None:
            flag(LENGTH_BIAS, found)
        if expected_options is not None and len(options) < expected_options:
            flag(TOO_FEW_OPTIONS, f"{len(options)} options, {expected_options} expected")

    fallbacks = [f"{step} parsed as {method!r}"
                 for step, method in (("answer", answer_method), ("distractors", distractor_method))
                 if _fallback(method)]
    if fallbacks:
        flag(PARSER_FALLBACK, "the model ignored the JSON layout: " + "; ".join(fallbacks))
    return flags
