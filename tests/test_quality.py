"""Quality flags: each rule on crafted generations, and flags stored by a real run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.engine import Database
from db.models import Generation, ItemStatus, QuestionType
from vqa_engine.client import RetryPolicy, Timeouts
from vqa_engine.host import EngineHost
from vqa_engine.runs import RunSettings, run_progress, start_run
from vqa_engine.settings import Endpoint
from vqa_engine.simulator import SimulatorServer
from vqa_engine.worker import WorkerSettings
from tests.generation_data import items_of, seed_dataset
from vqa_engine.quality import (
    ALL_FLAGS,
    DISTRACTOR_IS_ANSWER,
    DUPLICATE_OPTIONS,
    EMPTY_ANSWER,
    LENGTH_BIAS,
    OVERLONG_ANSWER,
    PARSER_FALLBACK,
    REFUSAL,
    TOO_FEW_OPTIONS,
    TRUNCATED_ANSWER,
    QualityConfig,
    check_generation,
    is_refusal,
    normalise,
)

MC = QuestionType.MULTIPLE_CHOICE
FIB = QuestionType.FILL_IN_BLANK


def mc(options: dict[str, str], correct: str, **changes: Any) -> dict[str, dict[str, str]]:
    values: dict[str, Any] = dict(expected_options=len(options), answer_method="json",
                                  distractor_method="json")
    values.update(changes)
    explanation = values.pop("explanation", "Seen in the picture.")
    return check_generation(MC, options[correct], options, correct, explanation, **values)


def fib(answer: str, **changes: Any) -> dict[str, dict[str, str]]:
    values: dict[str, Any] = dict(expected_options=None, answer_method="json",
                                  distractor_method=None)
    values.update(changes)
    explanation = values.pop("explanation", "Seen in the picture.")
    return check_generation(FIB, answer, {}, None, explanation, **values)


def test_a_clean_multiple_choice_generation_has_no_flags() -> None:
    assert mc({"A": "a cat", "B": "a dog", "C": "a horse", "D": "a bird"}, "B") == {}


def test_a_clean_fill_in_blank_generation_has_no_flags() -> None:
    assert fib("red") == {}


def test_flag_names_are_stable_snake_case() -> None:
    assert ALL_FLAGS == ("duplicate_options", "distractor_is_answer", "length_bias", "refusal",
                         "empty_answer", "overlong_answer", "truncated_answer",
                         "too_few_options", "parser_fallback")


def test_every_flag_carries_a_one_line_reason() -> None:
    flags = mc({"A": "抱歉，我看不到图片", "B": "抱歉，我看不到图片。", "C": "x"}, "A",
               expected_options=5, answer_method="plain", finish_reason="length")
    assert flags
    for value in flags.values():
        assert set(value) == {"reason"}
        assert value["reason"] and "\n" not in value["reason"]


# -- duplicate options


def test_options_equal_after_case_space_and_punctuation_are_duplicates() -> None:
    flags = mc({"A": "a cat", "B": "Red  Car.", "C": "red car"}, "A")
    assert DUPLICATE_OPTIONS in flags
    assert "B" in flags[DUPLICATE_OPTIONS]["reason"] and "C" in flags[DUPLICATE_OPTIONS]["reason"]


def test_full_width_characters_are_normalised_before_comparing() -> None:
    assert normalise("ＡＢＣ　１２３！") == "abc 123"
    assert DUPLICATE_OPTIONS in mc({"A": "ＲＥＤ　ＣＡＲ", "B": "red car", "C": "blue"}, "C")


def test_near_duplicates_above_the_ratio_are_flagged() -> None:
    flags = mc({"A": "the red car", "B": "the red cars", "C": "a bird"}, "C")
    assert DUPLICATE_OPTIONS in flags
    assert "near-duplicates" in flags[DUPLICATE_OPTIONS]["reason"]


def test_options_differing_in_a_real_word_are_not_duplicates() -> None:
    assert DUPLICATE_OPTIONS not in mc({"A": "red car", "B": "blue car", "C": "green car"}, "A")


def test_the_near_duplicate_ratio_is_configurable() -> None:
    options = {"A": "the red car", "B": "the red cars", "C": "a bird"}
    assert DUPLICATE_OPTIONS not in mc(options, "C",
                                       config=QualityConfig(near_duplicate_ratio=0.99))


def test_chinese_duplicates_differing_only_in_punctuation_are_flagged() -> None:
    assert DUPLICATE_OPTIONS in mc({"A": "红色的车。", "B": "红色的车", "C": "蓝色"}, "C")


# -- distractor is the answer


def test_a_distractor_equal_to_the_answer_after_normalisation_is_flagged() -> None:
    flags = mc({"A": "Red car!", "B": "a dog", "C": "red car"}, "C")
    assert DISTRACTOR_IS_ANSWER in flags
    assert "option A" in flags[DISTRACTOR_IS_ANSWER]["reason"]


def test_a_distractor_containing_the_answer_is_flagged() -> None:
    flags = mc({"A": "red", "B": "dark red", "C": "blue"}, "A")
    assert "contains the answer" in flags[DISTRACTOR_IS_ANSWER]["reason"]


def test_a_distractor_contained_in_the_answer_is_flagged() -> None:
    flags = mc({"A": "a red bicycle", "B": "bicycle", "C": "a car"}, "A")
    assert "contained in the answer" in flags[DISTRACTOR_IS_ANSWER]["reason"]


def test_the_same_number_and_unit_written_differently_is_flagged() -> None:
    flags = mc({"A": "3 kg", "B": "3.0kg", "C": "5 kg"}, "A")
    assert "same number and unit" in flags[DISTRACTOR_IS_ANSWER]["reason"]


def test_a_different_number_or_a_word_sharing_letters_is_not_the_answer() -> None:
    assert DISTRACTOR_IS_ANSWER not in mc({"A": "3 kg", "B": "30 kg", "C": "3 g"}, "A")
    assert DISTRACTOR_IS_ANSWER not in mc({"A": "cat", "B": "catalog", "C": "dog"}, "A")


# -- length bias


def test_the_correct_option_alone_being_longest_is_length_bias() -> None:
    flags = mc({"A": "red", "B": "a large red double-decker bus", "C": "blue"}, "B")
    assert LENGTH_BIAS in flags
    assert "option B" in flags[LENGTH_BIAS]["reason"]


def test_a_tie_for_longest_or_a_longer_distractor_is_not_length_bias() -> None:
    assert LENGTH_BIAS not in mc({"A": "green", "B": "white", "C": "red"}, "A")
    assert LENGTH_BIAS not in mc({"A": "red", "B": "a long distractor text", "C": "blue"}, "A")


def test_length_bias_needs_at_least_three_options() -> None:
    assert LENGTH_BIAS not in mc({"A": "red", "B": "a long correct answer"}, "B")


# -- refusals


@pytest.mark.parametrize("answer", [
    "I'm sorry, but I can't help with that.",
    "I cannot determine the colour from this image.",
    "I am unable to see the image.",
    "Sorry, I can't view the picture.",
    "抱歉，我无法回答这个问题。",
    "图片中看不到任何车辆",
    "对不起，没有提供图片",
])
def test_english_and_chinese_refusals_are_flagged(answer: str) -> None:
    assert is_refusal(answer)
    assert REFUSAL in fib(answer)


@pytest.mark.parametrize("answer", [
    "red", "a sorry-looking dog", "Two cats on a sofa", "红色", "三只猫", "candle",
])
def test_ordinary_answers_are_not_refusals(answer: str) -> None:
    assert not is_refusal(answer)
    assert REFUSAL not in fib(answer)


def test_a_full_width_refusal_is_recognised() -> None:
    assert is_refusal("Ｉ ｃａｎｎｏｔ see it")


# -- empty, overlong, truncated


def test_an_empty_or_punctuation_only_answer_is_flagged() -> None:
    assert EMPTY_ANSWER in fib("")
    assert EMPTY_ANSWER in fib(" ... ")
    assert EMPTY_ANSWER not in fib("0")


def test_an_answer_over_the_limit_is_overlong() -> None:
    assert OVERLONG_ANSWER in fib("word " * 80)
    assert OVERLONG_ANSWER not in fib("word " * 10)
    assert OVERLONG_ANSWER in fib("word " * 10, config=QualityConfig(max_answer_chars=20))


def test_an_answer_ending_with_an_ellipsis_is_truncated() -> None:
    assert TRUNCATED_ANSWER in fib("The car in the middle of the road is...")
    assert TRUNCATED_ANSWER in fib("路中间的车是…")
    assert TRUNCATED_ANSWER not in fib("The car is red.")


def test_an_explanation_cut_off_with_an_ellipsis_is_truncated() -> None:
    assert TRUNCATED_ANSWER in fib("red", explanation="Because the paint on the ...")


def test_finish_reason_length_is_truncated() -> None:
    flags = fib("red", finish_reason="length")
    assert "finish_reason" in flags[TRUNCATED_ANSWER]["reason"]
    assert TRUNCATED_ANSWER not in fib("red", finish_reason="stop")


# -- option count and parser fallback


def test_fewer_options_than_expected_is_flagged() -> None:
    options = {"A": "a cat", "B": "a dog", "C": "a horse"}
    flags = mc(options, "A", expected_options=4)
    assert flags[TOO_FEW_OPTIONS]["reason"] == "3 options, 4 expected"
    assert TOO_FEW_OPTIONS not in mc(options, "A", expected_options=3)
    assert TOO_FEW_OPTIONS not in mc(options, "A", expected_options=None)


def test_a_fallback_parse_method_is_flagged_and_names_the_step() -> None:
    options = {"A": "a cat", "B": "a dog", "C": "a horse"}
    flags = mc(options, "A", distractor_method="numbered")
    assert "distractors parsed as 'numbered'" in flags[PARSER_FALLBACK]["reason"]
    assert PARSER_FALLBACK in fib("red", answer_method="labelled")
    for method in ("json", "json_fenced", "json_embedded", None):
        assert PARSER_FALLBACK not in mc(options, "A", answer_method=method,
                                         distractor_method=method)


def test_option_checks_do_not_apply_to_fill_in_blank() -> None:
    flags = check_generation(FIB, "red", {"A": "x", "B": "x"}, None, "", expected_options=4,
                             answer_method="json", distractor_method=None)
    assert flags == {}


def test_a_decimal_is_not_mistaken_for_its_integer_part() -> None:
    assert normalise("3.5 kg") == "3.5 kg"
    assert DISTRACTOR_IS_ANSWER not in mc({"A": "3", "B": "3.5", "C": "4"}, "A")


# -- stored by a real run


def test_a_run_stores_the_flags_of_each_generation(
    database: Database, data_dir: Path, simulator: SimulatorServer
) -> None:
    refusal = "I'm sorry, I cannot see the image."

    def responder(role: str, prompt: str) -> str:
        clean = "clean picture" in prompt
        if role == "distractors":
            options = ["a dog", "a horse", "a bird"] if clean else ["red car", "Red car.", "a bus"]
            return json.dumps({"options": options})
        if clean:
            return json.dumps({"answer": "a cat", "explanation": "It sits on the mat."})
        return refusal  # plain text: the answer parser falls back

    simulator.reconfigure(responder=responder)
    dataset = seed_dataset(database, data_dir, multiple_choice=2, fill_in_blank=1, questions=[
        "What is in the refused picture?", "What is in the clean picture?",
        "Name the refused picture.",
    ])
    run_id = start_run(
        database, dataset, Endpoint(base_url=simulator.base_url, model="simulated-vlm"),
        RunSettings(concurrency=2, batch_size=4,
                    retry=RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.05),
                    timeouts=Timeouts(connect=2, first_byte=1.0, total=3.0)),
    )
    host = EngineHost(database, data=data_dir,
                      settings=WorkerSettings(poll_interval=0.05, heartbeat_interval=0.5))
    host.start()
    try:
        deadline = time.monotonic() + 20
        while not run_progress(database, run_id).status.is_finished:
            assert time.monotonic() < deadline, "the run did not finish in 20 s"
            time.sleep(0.05)
    finally:
        host.stop(10)

    items = items_of(database, dataset)
    assert {item.status for item in items} == {ItemStatus.GENERATED}
    with database.read() as session:
        flags = {g.item_id: g.quality_flags for g in session.scalars(
            select(Generation).where(Generation.id.in_([i.current_generation_id for i in items])))}
    refused_mc, clean_mc, refused_fib = (flags[item.id] for item in items)
    assert {REFUSAL, DUPLICATE_OPTIONS, PARSER_FALLBACK} <= set(refused_mc)
    assert "reads as a refusal" in refused_mc[REFUSAL]["reason"]
    assert "'plain'" in refused_mc[PARSER_FALLBACK]["reason"]
    assert set(refused_fib) == {REFUSAL, PARSER_FALLBACK}
    assert clean_mc == {}
