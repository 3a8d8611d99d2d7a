"""Every prompt the generator sends, in one place, with a version.

The version (`PROMPT_VERSION`, or a `PromptSet`'s own) is recorded on each Generation so a
reviewer can tell which wording produced an item, and it is part of each request's ledger
key through the prompt text itself.

Templates use `string.Template` placeholders (`$question`, `$correct_answer`, `$count`,
`$regeneration`) rather than `str.format`, so the JSON layouts they show the model need no
brace escaping and an edited template stays readable. Chinese questions get Chinese prompts
that ask for Chinese answers. Each template ends with the JSON layout it wants back; those
layout lines double as the stable markers `prompt_role` recognises.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

from db.models import QuestionType

PROMPT_VERSION = "2025-06.1"

ANSWER_LAYOUT = '{"answer": "'
OPTIONS_LAYOUT = '{"options": ["'
CHOICE_LAYOUT = '{"choice": "'

ANSWER_MC_EN = """\
Look at the image and answer the question about it.

Question: $question
$regeneration
Give the correct answer as a short phrase (a few words at most; a single number for counting \
questions) that can stand as one option of a multiple-choice question, and a one-sentence \
explanation based on what is visible in the image.
Reply with JSON only, in exactly this layout:
{"answer": "<the correct answer>", "explanation": "<one sentence>"}
"""

ANSWER_FIB_EN = """\
Look at the image and answer the question about it. If the question contains a blank \
(___), the answer is what belongs in the blank.

Question: $question
$regeneration
Give the answer as a word or short phrase (a single number for counting questions), and a \
one-sentence explanation based on what is visible in the image.
Reply with JSON only, in exactly this layout:
{"answer": "<the answer>", "explanation": "<one sentence>"}
"""

DISTRACTORS_EN = """\
You are writing a multiple-choice question about the image.

Question: $question
Correct answer: $correct_answer
$regeneration
Write exactly $count plausible but wrong options. Each must be the same kind of thing as the \
correct answer, similar in length and style, clearly wrong for this image, and different \
from the correct answer and from each other.
Reply with JSON only, in exactly this layout:
{"options": ["<wrong option 1>", "<wrong option 2>", "..."]}
"""

ANSWER_MC_ZH = """\
请仔细观察图片，回答关于图片的问题。

问题：$question
$regeneration
请用简短的中文短语给出正确答案（最多几个词；计数类问题只给一个数字），使它可以作为选择题的一个选项，\
并用一句中文根据图片中可见的内容说明理由。
只用 JSON 回复，严格使用以下格式：
{"answer": "<正确答案>", "explanation": "<一句话理由>"}
"""

ANSWER_FIB_ZH = """\
请仔细观察图片，回答关于图片的问题。如果问题中有空格（___），答案就是应填入空格的内容。

问题：$question
$regeneration
请用中文词语或简短短语给出答案（计数类问题只给一个数字），并用一句中文根据图片中可见的内容说明理由。
只用 JSON 回复，严格使用以下格式：
{"answer": "<答案>", "explanation": "<一句话理由>"}
"""

DISTRACTORS_ZH = """\
你正在为这张图片编写一道选择题。

问题：$question
正确答案：$correct_answer
$regeneration
请用中文写出恰好 $count 个看似合理但错误的选项。每个选项必须与正确答案属于同一类事物、长度和风格相近、\
对这张图片明显错误，并且与正确答案以及彼此都不相同。
只用 JSON 回复，严格使用以下格式：
{"options": ["<错误选项1>", "<错误选项2>", "..."]}
"""

PLACEHOLDERS: Mapping[str, frozenset[str]] = {
    "answer_mc_en": frozenset({"question", "regeneration"}),
    "answer_mc_zh": frozenset({"question", "regeneration"}),
    "answer_fib_en": frozenset({"question", "regeneration"}),
    "answer_fib_zh": frozenset({"question", "regeneration"}),
    "distractors_en": frozenset({"question", "correct_answer", "count", "regeneration"}),
    "distractors_zh": frozenset({"question", "correct_answer", "count", "regeneration"}),
}
"""The placeholders each template must contain (names are the `PromptSet` field names)."""


@dataclass(frozen=True)
class PromptSet:
    """One version of every template. Field names are the names stored for edited prompts."""

    answer_mc_en: str = ANSWER_MC_EN
    answer_mc_zh: str = ANSWER_MC_ZH
    answer_fib_en: str = ANSWER_FIB_EN
    answer_fib_zh: str = ANSWER_FIB_ZH
    distractors_en: str = DISTRACTORS_EN
    distractors_zh: str = DISTRACTORS_ZH
    version: str = PROMPT_VERSION

    @staticmethod
    def template_names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(PromptSet) if f.name != "version")

    def with_overrides(self, templates: Mapping[str, str], version: str) -> PromptSet:
        """A copy with some templates replaced (e.g. edited ones from the database)."""
        unknown = set(templates) - set(self.template_names())
        if unknown:
            from vqa_engine.errors import ConfigError

            raise ConfigError(f"unknown prompt template name(s) {sorted(unknown)}; "
                              f"known names are {list(self.template_names())}")
        return replace(self, version=version, **dict(templates))

    def missing_placeholders(self) -> dict[str, list[str]]:
        """Template name -> placeholders it lacks; empty when every template is complete."""
        missing: dict[str, list[str]] = {}
        for name, wanted in PLACEHOLDERS.items():
            present = _placeholders(getattr(self, name))
            lacking = sorted(wanted - present)
            if lacking:
                missing[name] = lacking
        return missing


DEFAULT_PROMPTS = PromptSet()

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_LATIN = re.compile(r"[A-Za-z]")


def is_chinese(text: str) -> bool:
    """Mostly Chinese: Han characters are at least 30% of the letters, and no Japanese kana."""
    han = len(_CJK.findall(text))
    if han == 0 or _KANA.search(text):
        return False
    latin = len(_LATIN.findall(text))
    return han / (han + latin) >= 0.3


def _placeholders(template: str) -> set[str]:
    found: set[str] = set()
    for match in string.Template.pattern.finditer(template):
        name = match.group("named") or match.group("braced")
        if name:
            found.add(name)
    return found


def _fill(template: str, **values: str) -> str:
    text = string.Template(template).safe_substitute(values)
    return re.sub(r"\n{3,}", "\n\n", text)


def _one_line(value: str) -> str:
    return " ".join(str(value).split())


def _answer_regeneration(chinese: bool, previous_answer: str | None, reason: str | None) -> str:
    if not previous_answer and not reason:
        return ""
    lines: list[str] = []
    if chinese:
        lines.append("此前为这个问题生成的答案已被审核者否决。")
        if previous_answer:
            lines.append(f"此前的答案：{_one_line(previous_answer)}")
        if reason:
            lines.append(f"否决理由：{_one_line(reason)}")
        lines.append("除非图片明确表明此前的答案正确，否则不要重复它；请考虑否决理由。")
    else:
        lines.append("An earlier answer to this question was rejected by a reviewer.")
        if previous_answer:
            lines.append(f"Previous answer: {_one_line(previous_answer)}")
        if reason:
            lines.append(f"Reviewer's reason: {_one_line(reason)}")
        lines.append("Do not repeat the previous answer unless the image leaves no doubt that "
                     "it is right; take the reason into account.")
    return "\n" + "\n".join(lines) + "\n"


def _distractor_regeneration(chinese: bool, previous: Sequence[str] | None,
                             reason: str | None) -> str:
    shown = [_one_line(option) for option in previous or () if str(option).strip()]
    if not shown and not reason:
        return ""
    lines: list[str] = []
    if chinese:
        lines.append("此前生成的错误选项已被审核者否决。")
        if shown:
            lines.append("此前的选项：" + "；".join(shown))
        if reason:
            lines.append(f"否决理由：{_one_line(reason)}")
        lines.append("请写出新的选项，不要重复此前的选项，并考虑否决理由。")
    else:
        lines.append("Earlier wrong options for this question were rejected by a reviewer.")
        if shown:
            lines.append("Previous options: " + "; ".join(shown))
        if reason:
            lines.append(f"Reviewer's reason: {_one_line(reason)}")
        lines.append("Write new options that do not repeat the previous ones and take the "
                     "reason into account.")
    return "\n" + "\n".join(lines) + "\n"


def answer_prompt(question: str, question_type: QuestionType, *,
                  previous_answer: str | None = None, reason: str | None = None,
                  prompts: PromptSet = DEFAULT_PROMPTS) -> str:
    """The answer call's prompt; asks for `{"answer": ..., "explanation": ...}`."""
    chinese = is_chinese(question)
    if QuestionType(question_type) is QuestionType.MULTIPLE_CHOICE:
        template = prompts.answer_mc_zh if chinese else prompts.answer_mc_en
    else:
        template = prompts.answer_fib_zh if chinese else prompts.answer_fib_en
    return _fill(template, question=question.strip(),
                 regeneration=_answer_regeneration(chinese, previous_answer, reason))


def distractor_prompt(question: str, correct_answer: str, count: int, *,
                      previous: Sequence[str] | None = None, reason: str | None = None,
                      prompts: PromptSet = DEFAULT_PROMPTS) -> str:
    """The distractor call's prompt; asks for `{"options": [...]}` with exactly `count` items."""
    if count < 1:
        raise ValueError(f"distractor count must be at least 1, got {count}")
    chinese = is_chinese(question)
    template = prompts.distractors_zh if chinese else prompts.distractors_en
    return _fill(template, question=question.strip(), correct_answer=_one_line(correct_answer),
                 count=str(count),
                 regeneration=_distractor_regeneration(chinese, previous, reason))


def prompt_role(text: str) -> str | None:
    """"answer", "distractors" or "check" for a prompt built here, by its JSON layout line;
    else None."""
    if CHOICE_LAYOUT in text:
        return "check"
    if OPTIONS_LAYOUT in text:
        return "distractors"
    if ANSWER_LAYOUT in text:
        return "answer"
    return None


@dataclass(frozen=True)
class DistractorAsk:
    """What a distractor prompt asks for, read back from its text (used by the simulator)."""

    count: int | None
    correct_answer: str | None


_COUNT = re.compile(r"(?:exactly|恰好)\s*(\d+)")
_CORRECT = re.compile(r"^(?:Correct answer:|正确答案：)\s*(.*)$", re.MULTILINE)


def read_distractor_prompt(text: str) -> DistractorAsk:
    counts = _COUNT.findall(text)
    corrects = _CORRECT.findall(text)
    return DistractorAsk(
        count=int(counts[-1]) if counts else None,
        correct_answer=corrects[-1].strip() if corrects else None,
    )


# -- model-based checks (vqa_engine.model_checks) -----------------------------------------
# Not part of `PromptSet`: a check must ask the same thing whatever wording a dataset uses
# for generation, so its templates are fixed and versioned on their own.

CHECK_PROMPT_VERSION = "2026-11.1"

CHECK_EN = """\
$instruction

Question: $question
Options:
$options

Reply with the letter of the correct option only, as JSON in exactly this layout:
{"choice": "<letter>"}
"""

CHECK_ZH = """\
$instruction

问题：$question
选项：
$options

只回复正确选项的字母，用 JSON 严格使用以下格式：
{"choice": "<字母>"}
"""

CHECK_WITH_IMAGE_EN = "Look at the image and answer the multiple-choice question about it."
CHECK_BLIND_EN = ("Answer the multiple-choice question. No image comes with it: choose the most "
                  "likely option from the question and the options alone.")
CHECK_WITH_IMAGE_ZH = "请仔细观察图片，回答关于图片的选择题。"
CHECK_BLIND_ZH = "请回答下面的选择题。题目没有附带图片：请仅根据问题和选项选出最可能正确的选项。"


def check_prompt(question: str, options: Mapping[str, str], *, blind: bool) -> str:
    """A check's prompt: the question with its options as `A. text` lines; asks for
    `{"choice": "<letter>"}`."""
    chinese = is_chinese(question)
    if chinese:
        template, instruction = CHECK_ZH, CHECK_BLIND_ZH if blind else CHECK_WITH_IMAGE_ZH
    else:
        template, instruction = CHECK_EN, CHECK_BLIND_EN if blind else CHECK_WITH_IMAGE_EN
    lines = "\n".join(f"{letter}. {_one_line(text)}" for letter, text in options.items())
    return _fill(template, instruction=instruction, question=_one_line(question),
                 options=lines)


@dataclass(frozen=True)
class CheckAsk:
    """What a check prompt asks, read back from its text (used by the simulator)."""

    question: str
    options: dict[str, str]
    blind: bool


_OPTION_LINE = re.compile(r"^([A-Z])\. (.*)$")


def read_check_prompt(text: str) -> CheckAsk:
    question = ""
    options: dict[str, str] = {}
    listing = False
    for line in text.splitlines():
        if line.startswith(("Question:", "问题：")):
            question = line.split(":", 1)[-1] if line.startswith("Q") else line[3:]
            question = question.strip()
        elif line.strip() in ("Options:", "选项："):
            listing = True
        elif listing:
            match = _OPTION_LINE.match(line)
            if match is None:
                listing = False
                continue
            options[match.group(1)] = match.group(2)
    blind = CHECK_BLIND_EN in text or CHECK_BLIND_ZH in text
    return CheckAsk(question, options, blind)
