"""Model text -> answer / options, across the layouts models actually produce."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqa_engine.errors import FormatError
from vqa_engine.parsing import ParsedAnswer, parse_answer, parse_distractors

ANSWERS = [
    ('{"answer": "red", "explanation": "The car is red."}', "red", "The car is red.", "json"),
    ('  {"answer": 3, "explanation": "three cats"}  ', "3", "three cats", "json"),
    ('{"Answer": "red"}', "red", "", "json"),
    ('{"答案": "红色", "解释": "车是红色的"}', "红色", "车是红色的", "json"),
    ('[{"answer": "blue"}]', "blue", "", "json"),
    ('```json\n{"answer": "blue", "explanation": "sky"}\n```', "blue", "sky", "json_fenced"),
    ('Sure! Here it is:\n```\n{"answer": "a dog"}\n```\nHope that helps.', "a dog", "",
     "json_fenced"),
    ('The result is {"answer": "green", "explanation": "grass"} as requested.', "green",
     "grass", "json_embedded"),
    ('{"answer": "red", "explanation": "it is "quoted" badly"}', "red", "it is", "json_loose"),
    ('{"answer": "tall tree", "explanation": "the tree is', "tall tree", "", "json_loose"),
    ("Answer: red\nExplanation: the car is red", "red", "the car is red", "labelled"),
    ("answer: 42", "42", "", "labelled"),
    ("**Answer:** Blue.\n**Explanation:** It is blue.", "Blue", "It is blue.", "labelled"),
    ("Answer: red. Explanation: paint", "red", "paint", "labelled"),
    ("Final answer: U.S.", "U.S.", "", "labelled"),
    ("Answer:\nthe left one\nExplanation: closer", "the left one", "closer", "labelled"),
    ("答案：红色\n解释：车身是红色的", "红色", "车身是红色的", "labelled"),
    ("答案: 3", "3", "", "labelled"),
    ("red\nBecause the car is red.", "red", "Because the car is red.", "plain"),
    ("3", "3", "", "plain"),
    ("  7  ", "7", "", "plain"),
    ('"a cat"', "a cat", "", "plain"),
    ("- a cat", "a cat", "", "plain"),
    ("<think>It might be blue... no, red.</think>\nAnswer: red", "red", "", "labelled"),
    ("<think>long thoughts</think>{\"answer\": \"owl\"}", "owl", "", "json"),
]


@pytest.mark.parametrize(("text", "answer", "explanation", "method"), ANSWERS)
def test_answers_are_found_in_every_layout(text, answer, explanation, method):
    parsed = parse_answer(text)
    assert (parsed.answer, parsed.explanation, parsed.method) == (answer, explanation, method)


def test_json_is_preferred_and_fallbacks_are_flagged():
    assert not parse_answer('{"answer": "red"}').fallback
    assert parse_answer("Answer: red").fallback
    assert parse_answer("red").fallback


UNUSABLE = [
    "", "   ", "\n\n", "null", "None", "N/A", "n/a", "...", "?!", "—", "```\n```",
    '{"answer": null}', '{"answer": ""}', '{"answer": "N/A", "explanation": "unclear"}',
    '{"answer": "  ...  "}', "Answer: ", "Answer: null", "答案：", '{"answer": "unfinished',
    "<think>I wonder", "***",
]


@pytest.mark.parametrize("text", UNUSABLE)
def test_unusable_answers_are_format_errors_that_keep_the_raw_text(text):
    with pytest.raises(FormatError) as caught:
        parse_answer(text)
    assert caught.value.raw == text
    assert caught.value.error_type == "format"


OPTIONS = [
    ('{"options": ["blue", "green", "yellow"]}', ["blue", "green", "yellow"], "json"),
    ('{"distractors": ["2", 4, 5]}', ["2", "4", "5"], "json"),
    ('["blue", "green"]', ["blue", "green"], "json"),
    ('{"选项": ["蓝色", "绿色"]}', ["蓝色", "绿色"], "json"),
    ('{"A": "blue", "B": "green"}', ["blue", "green"], "json"),
    ('{"options": [{"text": "blue"}, {"text": "green"}]}', ["blue", "green"], "json"),
    ('```json\n{"options": ["a cat", "a dog"]}\n```', ["a cat", "a dog"], "json_fenced"),
    ('Here you go: {"options": ["x1", "x2"]} - enjoy', ["x1", "x2"], "json_embedded"),
    ("Option 1: blue\nOption 2: green\nOption 3: yellow", ["blue", "green", "yellow"],
     "option_n"),
    ("选项1：蓝色\n选项2：绿色", ["蓝色", "绿色"], "option_n"),
    ("A. blue\nB. green\nC. yellow", ["blue", "green", "yellow"], "letter"),
    ("A) blue\nB) green", ["blue", "green"], "letter"),
    ("A: blue\nB: green", ["blue", "green"], "letter"),
    ("(A) blue\n(B) green", ["blue", "green"], "letter"),
    ("A、蓝色\nB、绿色", ["蓝色", "绿色"], "letter"),
    ("Here are the options:\n1. blue\n2. green\n3. yellow", ["blue", "green", "yellow"],
     "numbered"),
    ("1) 2\n2) 4\n3) 5", ["2", "4", "5"], "numbered"),
    ("1. 3.5 m\n2. 4.5 m", ["3.5 m", "4.5 m"], "numbered"),
    ("- blue\n- green\n* yellow", ["blue", "green", "yellow"], "bullet"),
    ("• **blue**\n• **green**", ["blue", "green"], "bullet"),
    ("blue\ngreen\nyellow", ["blue", "green", "yellow"], "plain"),
    ("Wrong options:\nblue\ngreen", ["blue", "green"], "plain"),
    ("2\n4\n5", ["2", "4", "5"], "plain"),
    ("blue, green, yellow", ["blue", "green", "yellow"], "comma"),
    ("蓝色、绿色、黄色", ["蓝色", "绿色", "黄色"], "comma"),
    ("- blue\n- ...\n- green", ["blue", "green"], "bullet"),
]


@pytest.mark.parametrize(("text", "options", "method"), OPTIONS)
def test_options_are_found_in_every_layout(text, options, method):
    parsed = parse_distractors(text)
    assert (parsed.options, parsed.method) == (options, method)


@pytest.mark.parametrize("text", ["", "  ", '{"options": []}', '{"options": [null, "", "..."]}',
                                  "---", "Options:"])
def test_no_usable_options_is_a_format_error(text):
    with pytest.raises(FormatError) as caught:
        parse_distractors(text)
    assert caught.value.raw == text


def test_format_error_message_says_what_was_wrong_and_what_to_do():
    with pytest.raises(FormatError) as caught:
        parse_answer("N/A")
    message = str(caught.value)
    assert "no usable answer" in message and "N/A" in message and "regenerate" in message


def test_a_long_answer_text_is_handled():
    text = "Answer: " + "word " * 20000
    assert parse_answer(text).method == "labelled"


def test_deeply_nested_json_does_not_crash():
    with pytest.raises(FormatError):
        parse_answer("[" * 100000)
    assert parse_distractors("[" * 30000 + "\nred\nblue").options == ["red", "blue"]


# -- never crash ---------------------------------------------------------------------------

any_text = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(list('{}[]":,\n `*-.#ABC1239答案：选项 null')), max_size=200),
    st.builds(json.dumps, st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
        lambda children: st.lists(children) | st.dictionaries(
            st.sampled_from(["answer", "explanation", "options", "A", "x"]) | st.text(),
            children), max_leaves=10)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_text)
def test_parse_answer_never_raises_anything_but_format_error(text):
    try:
        parsed = parse_answer(text)
    except FormatError as error:
        assert error.raw == text
        return
    assert isinstance(parsed, ParsedAnswer)
    assert parsed.answer.strip() and parsed.answer.strip().lower() not in {"null", "none", "n/a"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_text)
def test_parse_distractors_never_raises_anything_but_format_error(text):
    try:
        parsed = parse_distractors(text)
    except FormatError as error:
        assert error.raw == text
        return
    assert parsed.options and all(option.strip() for option in parsed.options)
