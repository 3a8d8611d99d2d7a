"""Turning model text into an answer or a list of options, whatever layout the model chose.

Models are asked for JSON but do not always comply: they wrap it in ``` fences, put prose
around it, or answer `Answer: ... / Explanation: ...`, `A. ...`, `1. ...`, bullets or plain
lines. The parsers try JSON first, then those layouts, and record in `method` which one
matched, because a fallback is a quality signal for the reviewer. Text that yields no usable
answer (empty, bare punctuation, `null`, `N/A`) raises `FormatError` with the raw text kept;
nothing else ever escapes these functions, whatever the input.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vqa_engine.errors import FormatError

JSON_METHODS = frozenset({"json", "json_fenced", "json_embedded"})
"""Methods meaning the model followed the requested layout (or nearly)."""

NULLISH = frozenset({"null", "none", "n/a", "nil", "undefined", "nan", "无", "空"})

MAX_SCAN = 50_000  # characters of model text examined; a longer answer is not an answer
MAX_JSON_STARTS = 64  # positions tried for JSON embedded in prose

ANSWER_KEYS = ("answer", "final_answer", "correct_answer", "答案", "正确答案")
EXPLANATION_KEYS = ("explanation", "reason", "reasoning", "rationale", "解释", "理由", "说明")
OPTION_KEYS = ("options", "distractors", "choices", "wrong_options", "incorrect_options",
               "选项", "干扰项", "错误选项")


@dataclass(frozen=True)
class ParsedAnswer:
    answer: str
    explanation: str
    method: str

    @property
    def fallback(self) -> bool:
        """True when the model ignored the requested JSON layout."""
        return self.method not in JSON_METHODS


@dataclass(frozen=True)
class ParsedOptions:
    options: list[str]
    method: str

    @property
    def fallback(self) -> bool:
        return self.method not in JSON_METHODS


# -- shared ------------------------------------------------------------------------------

_INFO_STRING = re.compile(r"[A-Za-z0-9_+-]*")
_WRAPPERS = (("**", "**"), ("__", "__"), ("`", "`"), ('"', '"'), ("'", "'"), ("“", "”"),
             ("‘", "’"), ("「", "」"), ("『", "』"), ("*", "*"))


def prepare_text(text: Any) -> str:
    """A reply cut to the scanned length, newlines unified, any thinking block dropped."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = text[:MAX_SCAN].replace("\r\n", "\n").replace("\r", "\n")
    lowered = text.lower()
    close = lowered.rfind("</think>")
    if close >= 0:  # reasoning models: the answer follows the last closed thinking block
        text, lowered = text[close + len("</think>"):], lowered[close + len("</think>"):]
    opening = lowered.find("<think>")
    if opening >= 0:  # thinking that never ended: no answer after it
        text = text[:opening]
    return text.strip()


def _fenced_blocks(text: str) -> Iterator[str]:
    """Contents of ``` fenced blocks (an info string such as `json` dropped), in linear time."""
    position = 0
    while True:
        start = text.find("```", position)
        if start < 0:
            return
        end = text.find("```", start + 3)
        if end < 0:
            return
        block = text[start + 3:end]
        first_line, newline, rest = block.partition("\n")
        if newline and _INFO_STRING.fullmatch(first_line.strip()):
            block = rest
        yield block.strip()
        position = end + 3


def clean_value(value: str) -> str:
    """Trim whitespace, markdown emphasis and matching quotes around a value."""
    text = value.strip()
    changed, rounds = True, 0
    while changed and text and rounds < 8:
        changed, rounds = False, rounds + 1
        for opening, closing in _WRAPPERS:
            if (len(text) >= len(opening) + len(closing) and text.startswith(opening)
                    and text.endswith(closing)):
                text = text[len(opening):len(text) - len(closing)].strip()
                changed = True
                break
    return text


def is_usable(value: str) -> bool:
    """Not empty, not only punctuation/symbols, not a null-like word. `3` is usable."""
    text = value.strip()
    if not text or text.lower() in NULLISH:
        return False
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def _drop_final_period(value: str) -> str:
    """`red.` -> `red` (prose punctuation); `U.S.` and `3.5` stay as they are."""
    if len(value) > 1 and value[-1] in ".。" and "." not in value[:-1]:
        return value[:-1].rstrip()
    return value


def _raw_preview(text: str) -> str:
    shown = " ".join(text.split())
    if not shown:
        return "the text was empty"
    if len(shown) > 80:
        shown = shown[:80] + "..."
    return f"the text began {shown!r}"


def json_candidates(text: str) -> Iterator[tuple[Any, str]]:
    """Every JSON value a reply may mean (whole, fenced, embedded), with how it was found."""
    decoder = json.JSONDecoder()
    try:
        yield json.loads(text), "json"
    except (ValueError, RecursionError):
        pass
    for block in _fenced_blocks(text):
        try:
            yield json.loads(block), "json_fenced"
        except (ValueError, RecursionError):
            continue
    starts = 0
    for index, char in enumerate(text):
        if char not in "{[":
            continue
        starts += 1
        if starts > MAX_JSON_STARTS:
            break
        try:
            value, _ = decoder.raw_decode(text, index)
        except (ValueError, RecursionError):
            continue
        yield value, "json_embedded"


def scalar_text(value: Any) -> str | None:
    """A JSON scalar (or one-element list) as text; None for anything larger."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, list) and len(value) == 1:
        return scalar_text(value[0])
    return None


def lookup_key(data: dict[Any, Any], keys: tuple[str, ...]) -> tuple[bool, Any]:
    """The first of `keys` present in `data`, ignoring case and spaces: (found, value)."""
    lowered = {str(key).strip().lower(): value for key, value in data.items()}
    for key in keys:
        if key in lowered:
            return True, lowered[key]
    return False, None


# -- answers ------------------------------------------------------------------------------

_ANSWER_LABEL = re.compile(
    r"^[#>*_\s-]{0,6}(?:final answer|correct answer|answer|正确答案|最终答案|答案)"
    r"[*_\s]{0,4}[:：][*_\s]{0,4}(.*)$", re.IGNORECASE)
_EXPLANATION_WORDS = r"(?:explanation|reasoning|reason|rationale|解释|理由|说明)"
_EXPLANATION_LABEL = re.compile(
    r"^[#>*_\s-]{0,6}" + _EXPLANATION_WORDS + r"[*_\s]{0,4}[:：][*_\s]{0,4}(.*)$",
    re.IGNORECASE)
_INLINE_EXPLANATION = re.compile(
    r"(?<![A-Za-z])" + _EXPLANATION_WORDS + r"[*_\s]{0,4}[:：][*_\s]{0,4}(.*)$", re.IGNORECASE)
_LOOSE_ANSWER = re.compile(
    r"""["']answer["']\s*:\s*(?:"((?:[^"\\\n]|\\.){0,2000})"|'([^'\n]{0,2000})'|(-?\d+(?:\.\d+)?))""",
    re.IGNORECASE)
_LOOSE_EXPLANATION = re.compile(
    r"""["']explanation["']\s*:\s*(?:"((?:[^"\\\n]|\\.){0,4000})"|'([^'\n]{0,4000})')""",
    re.IGNORECASE)


def _unusable(text: str, what: str) -> FormatError:
    return FormatError(
        f"the model gave no usable answer ({what}; {_raw_preview(text)}); regenerate the item, "
        "or check that the model and prompt produce an answer",
        raw=text)


def _answer_from_json(text: str) -> ParsedAnswer | None:
    for value, method in json_candidates(text):
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
            value = value[0]
        if not isinstance(value, dict):
            continue
        found, answer = lookup_key(value, ANSWER_KEYS)
        if not found:
            continue
        answer_text = scalar_text(answer)
        answer_text = clean_value(answer_text) if answer_text is not None else ""
        if not is_usable(answer_text):
            raise _unusable(text, f"its JSON answer was {json.dumps(answer)[:40]}")
        _, explanation = lookup_key(value, EXPLANATION_KEYS)
        explanation_text = scalar_text(explanation) or ""
        return ParsedAnswer(answer_text, explanation_text.strip(), method)
    return None


def _unescape_loose(value: str) -> str:
    try:
        return str(json.loads(f'"{value}"'))
    except (ValueError, RecursionError):
        return value


def _answer_from_loose_json(text: str) -> ParsedAnswer | None:
    match = _LOOSE_ANSWER.search(text)
    if match is None:
        return None
    if match.group(1) is not None:
        answer = _unescape_loose(match.group(1))
    else:
        answer = match.group(2) if match.group(2) is not None else match.group(3)
    answer = clean_value(answer)
    if not is_usable(answer):
        raise _unusable(text, "its JSON-like answer was empty")
    explanation = ""
    found = _LOOSE_EXPLANATION.search(text)
    if found is not None:
        explanation = (_unescape_loose(found.group(1)) if found.group(1) is not None
                       else found.group(2))
    return ParsedAnswer(answer, explanation.strip(), "json_loose")


def _text_lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n")
            if line.strip() and not line.strip().startswith("```")]


def _answer_from_labels(text: str) -> ParsedAnswer | None:
    lines = _text_lines(text)
    for index, line in enumerate(lines):
        match = _ANSWER_LABEL.match(line)
        if match is None:
            continue
        rest = match.group(1)
        explanation = ""
        inline = _INLINE_EXPLANATION.search(rest)
        if inline is not None:
            explanation = inline.group(1)
            rest = rest[:inline.start()]
        following = lines[index + 1:]
        if not clean_value(rest) and following and not _EXPLANATION_LABEL.match(following[0]):
            rest, following = following[0], following[1:]
        if not explanation:
            explanation_lines: list[str] = []
            for later in following:
                label = _EXPLANATION_LABEL.match(later)
                explanation_lines = [label.group(1)] if label else [*explanation_lines, later]
            explanation = " ".join(part.strip() for part in explanation_lines if part.strip())
        answer = _drop_final_period(clean_value(rest))
        if not is_usable(answer):
            raise _unusable(text, f"the text after '{line[:match.start(1)].strip()}' was empty")
        return ParsedAnswer(answer, clean_value(explanation), "labelled")
    return None


def parse_answer(text: str) -> ParsedAnswer:
    """The answer and explanation in `text`; `FormatError(raw=text)` when there is none."""
    prepared = prepare_text(text)
    raw = text if isinstance(text, str) else str(text)
    try:
        for attempt in (_answer_from_json, _answer_from_loose_json, _answer_from_labels):
            parsed = attempt(prepared)
            if parsed is not None:
                return parsed
    except FormatError as error:
        error.raw = raw
        raise
    lines = _text_lines(prepared)
    if not lines:
        raise FormatError("the model gave no usable answer (the text was empty); regenerate "
                          "the item, or check that the model and prompt produce an answer",
                          raw=raw)
    if lines[0].startswith(("{", "[")):
        raise _unusable(raw, "it looks like JSON that is broken or cut short")
    answer = _drop_final_period(clean_value(_strip_marker(lines[0])))
    if not is_usable(answer):
        raise _unusable(raw, "its first line has no letters or digits")
    return ParsedAnswer(answer, " ".join(lines[1:]).strip(), "plain")


# -- options ------------------------------------------------------------------------------

_LINE_LAYOUTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("option_n", re.compile(
        r"^(?:option|choice|distractor|wrong option|选项|干扰项)\s*\d{1,2}\s*[:：.)\]、-]\s*(.*)$",
        re.IGNORECASE)),
    ("letter", re.compile(r"^[(（]?[A-H](?:[.．]\s+|[)）:：、]\s*)(.*)$")),
    ("numbered", re.compile(r"^[(（]?\d{1,2}(?:[.．]\s+|[)）:：、]\s*)(.*)$")),
    ("bullet", re.compile(r"^[-*•·+]\s+(.*)$")),
)
_SEPARATORS = re.compile(r"[,;，；、]")


def _strip_marker(line: str) -> str:
    for _, pattern in _LINE_LAYOUTS:
        match = pattern.match(line)
        if match is not None:
            return match.group(1)
    return line


def _option_text(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("text", "option", "value", "content"):
            if key in value:
                return _option_text(value[key])
        return None
    if value is None or isinstance(value, (list, bool)):
        return None
    if isinstance(value, (str, int, float)):
        return clean_value(str(value))
    return None


def _usable_options(values: list[Any]) -> list[str]:
    options: list[str] = []
    for value in values:
        text = _option_text(value)
        if text is not None and is_usable(text):
            options.append(text)
    return options


def _options_from_json(text: str) -> ParsedOptions | None:
    for value, method in json_candidates(text):
        items: list[Any] | None = None
        if isinstance(value, list):
            items = value
        elif isinstance(value, dict):
            found, listed = lookup_key(value, OPTION_KEYS)
            if found and isinstance(listed, list):
                items = listed
            elif found and isinstance(listed, dict):
                items = list(listed.values())
            elif value and all(re.fullmatch(r"[A-Ha-h]", str(key)) for key in value):
                items = list(value.values())
        if items is None:
            continue
        options = _usable_options(items)
        if not options:
            raise FormatError(
                f"the model's JSON listed no usable options ({_raw_preview(text)}); regenerate "
                "the item, or check that the model and prompt produce options", raw=text)
        return ParsedOptions(options, method)
    return None


def parse_distractors(text: str) -> ParsedOptions:
    """The options listed in `text`; `FormatError(raw=text)` when there are none."""
    prepared = prepare_text(text)
    raw = text if isinstance(text, str) else str(text)
    try:
        parsed = _options_from_json(prepared)
    except FormatError as error:
        error.raw = raw
        raise
    if parsed is not None:
        return parsed

    lines = _text_lines(prepared)
    by_layout: dict[str, list[str]] = {name: [] for name, _ in _LINE_LAYOUTS}
    plain: list[str] = []
    for line in lines:
        line = clean_value(line) if line.startswith("**") and line.endswith("**") else line
        for name, pattern in _LINE_LAYOUTS:
            match = pattern.match(line)
            if match is not None:
                by_layout[name].append(match.group(1))
                break
        else:
            plain.append(line)
    ranked = sorted(by_layout.items(), key=lambda item: -len(item[1]))
    best_name, best_values = ranked[0]
    if best_values:
        options = _usable_options(list(best_values))
        method = best_name
    else:
        kept = [line for line in plain if not line.rstrip().endswith((":", "："))]
        method = "plain"
        if len(kept) == 1 and _SEPARATORS.search(kept[0]):
            kept = _SEPARATORS.split(kept[0])
            method = "comma"
        options = _usable_options(list(kept))
    if not options:
        raise FormatError(
            f"the model listed no usable options ({_raw_preview(raw)}); regenerate the item, or "
            "check that the model and prompt produce options", raw=raw)
    return ParsedOptions(options, method)
