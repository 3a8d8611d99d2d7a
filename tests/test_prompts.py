"""Prompt templates: language, layouts asked for, regeneration context, role markers."""

from __future__ import annotations

import pytest

from db.models import QuestionType
from vqa_engine.errors import ConfigError
from vqa_engine.prompts import (
    DEFAULT_PROMPTS,
    PROMPT_VERSION,
    PromptSet,
    answer_prompt,
    distractor_prompt,
    is_chinese,
    prompt_role,
    read_distractor_prompt,
)

MC = QuestionType.MULTIPLE_CHOICE
FIB = QuestionType.FILL_IN_BLANK


@pytest.mark.parametrize(("text", "chinese"), [
    ("图中的汽车是什么颜色？", True),
    ("图中的 iPhone 是什么颜色？", True),
    ("这个标志上写着什么", True),
    ("What colour is the car?", False),
    ("What does the sign 出口 say on the wall of the station?", False),
    ("この車は何色ですか？", False),  # Japanese: kana present
    ("", False),
    ("1 + 1 = ?", False),
])
def test_is_chinese_detects_mostly_han_text(text, chinese):
    assert is_chinese(text) is chinese


@pytest.mark.parametrize("question_type", [MC, FIB])
def test_english_answer_prompts_ask_for_the_json_answer_layout(question_type):
    prompt = answer_prompt("What colour is the car?", question_type)
    assert "What colour is the car?" in prompt
    assert '{"answer": "' in prompt and '"explanation"' in prompt
    assert "$" not in prompt
    assert prompt_role(prompt) == "answer"


def test_multiple_choice_and_fill_in_blank_prompts_differ():
    assert answer_prompt("Q ___ ?", MC) != answer_prompt("Q ___ ?", FIB)
    assert "blank" in answer_prompt("Q ___ ?", FIB)


@pytest.mark.parametrize("question_type", [MC, FIB])
def test_chinese_questions_get_chinese_prompts_asking_for_chinese_answers(question_type):
    prompt = answer_prompt("图中的汽车是什么颜色？", question_type)
    assert "问题：图中的汽车是什么颜色？" in prompt
    assert "中文" in prompt
    assert "Look at the image" not in prompt
    assert prompt_role(prompt) == "answer"


def test_distractor_prompt_asks_for_exactly_count_options_and_names_the_answer():
    prompt = distractor_prompt("What colour is the car?", "dark red", 3)
    assert "exactly 3" in prompt and "Correct answer: dark red" in prompt
    assert '{"options": ["' in prompt
    assert prompt_role(prompt) == "distractors"
    assert read_distractor_prompt(prompt).count == 3
    assert read_distractor_prompt(prompt).correct_answer == "dark red"


def test_chinese_distractor_prompt_is_chinese_and_readable_back():
    prompt = distractor_prompt("图中有几只猫？", "3", 4)
    assert "恰好 4" in prompt and "正确答案：3" in prompt and "中文" in prompt
    ask = read_distractor_prompt(prompt)
    assert (ask.count, ask.correct_answer) == (4, "3")


def test_numbers_in_the_question_do_not_confuse_the_count_read_back():
    prompt = distractor_prompt("Is it exactly 7 metres tall?", "yes", 2)
    assert read_distractor_prompt(prompt).count == 2


def test_regeneration_injects_previous_answer_and_reason():
    plain = answer_prompt("What colour is the car?", MC)
    again = answer_prompt("What colour is the car?", MC, previous_answer="red",
                          reason="the car is maroon, not red")
    assert "Previous answer: red" in again
    assert "the car is maroon, not red" in again
    assert "Do not repeat" in again
    assert "Previous answer" not in plain and plain != again


def test_regeneration_with_only_a_reason_still_mentions_it():
    prompt = answer_prompt("图中的汽车是什么颜色？", FIB, reason="太笼统")
    assert "否决理由：太笼统" in prompt and "此前的答案：" not in prompt


def test_distractor_regeneration_lists_the_previous_options():
    prompt = distractor_prompt("What colour?", "red", 3, previous=["blue", "green"],
                               reason="too easy")
    assert "Previous options: blue; green" in prompt and "too easy" in prompt
    assert prompt_role(prompt) == "distractors"


def test_multi_line_reason_stays_on_one_line():
    prompt = answer_prompt("Q?", MC, previous_answer="a\nb", reason="line one\nline two")
    assert "Previous answer: a b" in prompt and "line one line two" in prompt


def test_prompt_role_is_none_for_other_text():
    assert prompt_role("Reply with the single word OK.") is None


def test_distractor_count_must_be_positive():
    with pytest.raises(ValueError):
        distractor_prompt("Q?", "a", 0)


def test_default_prompts_carry_the_module_version_and_every_placeholder():
    assert DEFAULT_PROMPTS.version == PROMPT_VERSION
    assert DEFAULT_PROMPTS.missing_placeholders() == {}
    assert set(PromptSet.template_names()) == {
        "answer_mc_en", "answer_mc_zh", "answer_fib_en", "answer_fib_zh",
        "distractors_en", "distractors_zh"}


def test_overridden_templates_are_used_and_checked():
    custom = DEFAULT_PROMPTS.with_overrides(
        {"answer_mc_en": 'Q: $question\n$regeneration\n{"answer": "..."}'}, version="edited-1")
    assert custom.version == "edited-1"
    assert answer_prompt("Why?", MC, prompts=custom).startswith("Q: Why?")
    broken = DEFAULT_PROMPTS.with_overrides({"distractors_en": "no placeholders"}, "x")
    assert broken.missing_placeholders() == {
        "distractors_en": ["correct_answer", "count", "question", "regeneration"]}
    with pytest.raises(ConfigError):
        DEFAULT_PROMPTS.with_overrides({"nonsense": "x"}, "x")


def test_dollar_signs_and_braces_in_questions_are_kept_verbatim():
    prompt = answer_prompt("Is the price $5 or {x}?", MC)
    assert "Is the price $5 or {x}?" in prompt
