"""Editable prompt templates: versioned, validated, reset to default, applied to runs."""

from __future__ import annotations

import pytest

from db.engine import Database
from vqa_engine.errors import ValidationError
from vqa_engine.prompt_store import (
    current_prompts,
    current_text,
    default_text,
    history,
    reset_template,
    save_template,
)
from vqa_engine.prompts import DEFAULT_PROMPTS


def test_untouched_database_uses_the_shipped_prompts(database: Database) -> None:
    assert current_prompts(database) == DEFAULT_PROMPTS


def test_an_edit_becomes_the_template_in_force_with_a_new_set_version(database: Database) -> None:
    text = default_text("answer_mc_en") + "\nBe brief.\n"
    saved = save_template(database, "answer_mc_en", text)
    prompts = current_prompts(database)
    assert saved.version == 1
    assert prompts.answer_mc_en == text
    assert prompts.distractors_en == DEFAULT_PROMPTS.distractors_en
    assert prompts.version != DEFAULT_PROMPTS.version
    assert prompts.version.startswith(DEFAULT_PROMPTS.version)
    assert len(prompts.version) <= 40


def test_every_version_is_kept_and_reset_restores_the_default(database: Database) -> None:
    first = default_text("distractors_en") + "\nNo jokes.\n"
    second = default_text("distractors_en") + "\nNo jokes, no puns.\n"
    save_template(database, "distractors_en", first)
    save_template(database, "distractors_en", second)
    assert current_text(database, "distractors_en") == second
    restored = reset_template(database, "distractors_en")
    assert restored is not None and restored.is_default
    assert [v.version for v in history(database, "distractors_en")] == [3, 2, 1]
    assert current_prompts(database) == DEFAULT_PROMPTS
    assert reset_template(database, "distractors_en") is None


def test_a_template_missing_a_placeholder_is_refused_naming_it(database: Database) -> None:
    broken = default_text("distractors_en").replace("$count", "three")
    with pytest.raises(ValidationError, match=r"\$count"):
        save_template(database, "distractors_en", broken)
    assert history(database, "distractors_en") == []


@pytest.mark.parametrize("name", ["nope", "version"])
def test_an_unknown_template_name_is_refused(database: Database, name: str) -> None:
    with pytest.raises(ValidationError, match="no prompt template"):
        save_template(database, name, "$question")


def test_saving_the_current_text_again_adds_no_version(database: Database) -> None:
    text = default_text("answer_fib_en") + "\nShort.\n"
    first = save_template(database, "answer_fib_en", text)
    again = save_template(database, "answer_fib_en", text)
    assert again.id == first.id
    with pytest.raises(ValidationError, match="unchanged"):
        save_template(database, "answer_fib_zh", default_text("answer_fib_zh"))
