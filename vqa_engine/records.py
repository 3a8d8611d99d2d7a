"""The output record of one item: the layout of the original command-line pipeline.

`results.json` of `python -m vqa_engine generate` and the dashboard's default JSON export
both come from `item_record`, so the two can never drift apart.

    {"id", "image", "question", "question_type",
     "answer"          (the correct letter for multiple choice, the text for fill-in-blank),
     "options"         ({"A": ..., "B": ...}; {} for fill-in-blank),
     "correct_option"  (the correct answer's text),
     "full_question"   (question + one line per option "A: ..."),
     "explanation",
     ...the input's extra fields, unchanged...,
     "review": {"status", "model", "generation_id", "prompt_version"}}

Extra input fields never overwrite the fields above; a clashing one is kept under
`input_<name>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from db.models import Generation, Item, QuestionType

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CORE_FIELDS = (
    "id",
    "image",
    "question",
    "question_type",
    "answer",
    "options",
    "correct_option",
    "full_question",
    "explanation",
    "review",
)


def compose_full_question(question: str, options: Mapping[str, str]) -> str:
    """The question followed by one line per option, `A: ...`."""
    lines = [question.rstrip()]
    lines.extend(f"{letter}: {text}" for letter, text in options.items())
    return "\n".join(lines)


def item_record(item: Item, generation: Generation | None) -> dict[str, Any]:
    """The exported form of an item with its current generation (None: not generated)."""
    options: dict[str, str] = dict(generation.options or {}) if generation else {}
    record: dict[str, Any] = {
        "id": item.external_id,
        "image": item.image_ref,
        "question": item.question,
        "question_type": item.question_type.value,
    }
    if generation is None:
        record.update(answer=None, options={}, correct_option=None, full_question=item.question,
                      explanation=None)
    elif item.question_type is QuestionType.MULTIPLE_CHOICE:
        letter = generation.correct_letter
        record.update(
            answer=letter,
            options=options,
            correct_option=options.get(letter) if letter else None,
            full_question=generation.full_question or compose_full_question(item.question, options),
            explanation=generation.explanation,
        )
    else:
        record.update(
            answer=generation.answer,
            options={},
            correct_option=generation.answer,
            full_question=item.question,
            explanation=generation.explanation,
        )
    for name, value in (item.extra or {}).items():
        record[name if name not in CORE_FIELDS else f"input_{name}"] = value
    record["review"] = {
        "status": item.status.value,
        "model": generation.model if generation else None,
        "generation_id": generation.id if generation else None,
        "prompt_version": generation.prompt_version if generation else None,
    }
    return record
