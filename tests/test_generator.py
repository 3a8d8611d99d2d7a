"""One item's generation: distractor clean-up, shuffling, letters, fill-in-blank, retries,
regeneration. Model calls go to a real aiohttp endpoint on 127.0.0.1."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from db.models import QuestionType, RegenerateScope
from vqa_engine.client import ClientConfig, RetryPolicy, VLMClient
from vqa_engine.errors import AuthenticationError
from vqa_engine.generator import (
    GenerationSettings,
    ItemGenerator,
    ItemJob,
    Step,
    clean_distractors,
    distractor_count,
    item_seed,
    shuffle_options,
)
from vqa_engine.ledger import LedgerRecord
from vqa_engine.settings import Endpoint
from tests.generation_data import tiny_jpeg
from tests.scripted_endpoint import Reply, ScriptedEndpoint, Seen, default_reply

# ---------------------------------------------------------------- pure functions


def test_clean_distractors_trims_and_drops_case_insensitive_duplicates() -> None:
    assert clean_distractors(["  blue ", "Blue", "BLUE", "green", "", "   "], "red") == [
        "blue", "green"]


def test_clean_distractors_drops_options_equal_to_contained_in_or_containing_the_answer() -> None:
    candidates = ["Red Bicycle", "bicycle", "a red bicycle with a basket", "green car", "car"]
    assert clean_distractors(candidates, "red bicycle") == ["green car", "car"]


def test_clean_distractors_treats_whitespace_runs_as_one_space() -> None:
    assert clean_distractors(["red   bicycle", "two  dogs", "two dogs"], "red bicycle") == [
        "two  dogs"]


def test_clean_distractors_keeps_numbers_that_differ_from_a_numeric_answer() -> None:
    assert clean_distractors(["2", "4", "3", "5"], "3") == ["2", "4", "5"]


def test_shuffle_is_deterministic_for_a_seed_and_puts_the_answer_at_the_letter() -> None:
    options, letter = shuffle_options("cat", ["dog", "cow", "hen"], seed=12345)
    again = shuffle_options("cat", ["dog", "cow", "hen"], seed=12345)
    assert (options, letter) == again
    assert list(options) == ["A", "B", "C", "D"]
    assert options[letter] == "cat"
    assert sorted(options.values()) == ["cat", "cow", "dog", "hen"]


def test_shuffle_spreads_the_correct_letter_over_all_positions() -> None:
    letters = Counter(shuffle_options("x", ["a", "b", "c"], seed)[1] for seed in range(400))
    assert set(letters) == {"A", "B", "C", "D"}
    assert min(letters.values()) > 60


def test_item_seed_is_stable_and_changes_with_the_regeneration_number() -> None:
    first = item_seed("ab" * 32, "How many?", "q1", 0)
    assert first == item_seed("ab" * 32, "How many?", "q1", 0)
    assert first != item_seed("ab" * 32, "How many?", "q1", 1)
    assert first != item_seed("ab" * 32, "How many?", "q2", 0)
    assert 0 <= first < 2**63


def test_distractor_count_stays_in_the_configured_range_and_covers_it() -> None:
    settings = GenerationSettings(distractors_min=2, distractors_max=4)
    counts = {distractor_count(seed, settings) for seed in range(200)}
    assert counts == {2, 3, 4}
    fixed = GenerationSettings(distractors_min=3, distractors_max=3)
    assert {distractor_count(seed, fixed) for seed in range(50)} == {3}


def test_generation_settings_refuse_an_inverted_distractor_range() -> None:
    with pytest.raises(ValueError, match="distractor range"):
        GenerationSettings(distractors_min=4, distractors_max=2)


@given(st.lists(st.text(max_size=12), max_size=8), st.text(max_size=12))
def test_cleaned_distractors_never_overlap_the_answer_or_each_other(
    candidates: list[str], correct: str,
) -> None:
    kept = clean_distractors(candidates, correct)
    keys = [" ".join(k.split()).casefold() for k in kept]
    answer = " ".join(correct.split()).casefold()
    assert len(set(keys)) == len(keys) and all(keys)
    assert all(k == k.strip() for k in kept)
    if answer:
        assert not any(answer in k or k in answer for k in keys)


@given(st.text(min_size=1, max_size=8), st.lists(st.text(max_size=8), max_size=6),
       st.integers(min_value=0, max_value=2**63 - 1))
def test_shuffled_options_are_a_permutation_with_the_answer_at_its_letter(
    correct: str, distractors: list[str], seed: int,
) -> None:
    options, letter = shuffle_options(correct, distractors, seed)
    assert list(options) == list("ABCDEFG"[: len(distractors) + 1])
    assert options[letter] == correct
    assert sorted(options.values()) == sorted([correct, *distractors])
    assert shuffle_options(correct, distractors, seed) == (options, letter)


# ---------------------------------------------------------------- against an endpoint

IMAGE = tiny_jpeg(3)
SHA = "c3" * 32


def make_job(question_type: QuestionType = QuestionType.MULTIPLE_CHOICE, **changes: object
             ) -> ItemJob:
    async def load() -> bytes:
        return IMAGE

    values: dict[str, object] = dict(
        item_id=1, external_id="q1", question="What is in the middle of the picture?",
        question_type=question_type, image_sha256=SHA, load_image=load,
    )
    values.update(changes)
    return ItemJob(**values)  # type: ignore[arg-type]


class Harness:
    def __init__(self, client: VLMClient, settings: GenerationSettings) -> None:
        self.records: list[LedgerRecord] = []
        self.generator = ItemGenerator(client, settings, model=client.model,
                                       record=self.records.append, run_id=None)


def client_for(endpoint: ScriptedEndpoint, **changes: object) -> VLMClient:
    config = ClientConfig(
        endpoint=Endpoint(base_url=endpoint.base_url, model="Test-Model"),
        concurrency=4, retry=RetryPolicy(max_retries=0, base_delay=0.01), **changes,  # type: ignore[arg-type]
    )
    return VLMClient(config)


async def test_multiple_choice_asks_for_the_answer_then_distractors_and_shuffles() -> None:
    with ScriptedEndpoint() as endpoint:
        async with client_for(endpoint) as client:
            harness = Harness(client, GenerationSettings())
            outcome = await harness.generator.generate(make_job())
    assert outcome.ok and outcome.attempts == 1
    result = outcome.result
    assert result is not None
    assert [s.role for s in endpoint.seen] == ["answer", "distractors"]
    assert "Correct answer: a red bicycle" in endpoint.seen[1].prompt
    assert result.options[result.correct_letter or ""] == "a red bicycle"
    assert 3 <= len(result.options) <= 5
    assert list(result.options) == list("ABCDE"[: len(result.options)])
    lines = result.full_question.splitlines()
    assert lines[0] == "What is in the middle of the picture?"
    assert lines[1:] == [f"{letter}: {text}" for letter, text in result.options.items()]
    assert result.explanation == "It is in the middle."
    assert [r.ok for r in harness.records] == [True, True]
    assert {r.role for r in harness.records} == {"answer", "distractors"}
    assert endpoint.seen[0].model == "test-model"  # normalized name is what is sent


async def test_the_same_item_is_shuffled_the_same_way_every_time() -> None:
    with ScriptedEndpoint() as endpoint:
        async with client_for(endpoint) as client:
            first = await Harness(client, GenerationSettings()).generator.generate(make_job())
            second = await Harness(client, GenerationSettings()).generator.generate(make_job())
    assert first.result is not None and second.result is not None
    assert first.result.options == second.result.options
    assert first.result.shuffle_seed == second.result.shuffle_seed


async def test_fill_in_blank_takes_one_call_and_has_no_options() -> None:
    with ScriptedEndpoint() as endpoint:
        async with client_for(endpoint) as client:
            outcome = await Harness(client, GenerationSettings()).generator.generate(
                make_job(QuestionType.FILL_IN_BLANK, question="The bicycle is ___."))
    assert outcome.result is not None
    assert [s.role for s in endpoint.seen] == ["answer"]
    assert outcome.result.answer == "a red bicycle"
    assert outcome.result.options == {} and outcome.result.correct_letter is None
    assert outcome.result.full_question == "The bicycle is ___."


async def test_too_few_distractors_after_cleanup_is_a_format_error_retried_without_a_new_answer_call() -> None:
    def script(seen: Seen, _n: int) -> Reply:
        if seen.role == "distractors":  # everything overlaps the answer
            return Reply(json.dumps({"options": ["red bicycle", "A red bicycle", "bicycle"]}))
        return default_reply(seen, _n)

    with ScriptedEndpoint(script) as endpoint:
        async with client_for(endpoint) as client:
            harness = Harness(client, GenerationSettings(attempt_limit=3))
            outcome = await harness.generator.generate(make_job())
    assert not outcome.ok and outcome.attempts == 3
    assert endpoint.count("answer") == 1
    assert endpoint.count("distractors") == 3
    assert {(f.error_type, f.error_step) for f in outcome.failures} == {("format", "distractors")}
    assert "at least 2" in outcome.failures[-1].error_message
    failed = [r for r in harness.records if not r.ok]
    assert len(failed) == 3 and all(r.response_text for r in failed)  # raw text kept
    assert outcome.failures[-1].answer == "a red bicycle"


async def test_an_unusable_answer_is_a_format_error_and_a_later_attempt_can_succeed() -> None:
    def script(seen: Seen, number: int) -> Reply:
        if seen.role == "answer" and number == 1:
            return Reply('{"answer": null}')
        return default_reply(seen, number)

    with ScriptedEndpoint(script) as endpoint:
        async with client_for(endpoint) as client:
            outcome = await Harness(client, GenerationSettings()).generator.generate(make_job())
    assert outcome.ok and outcome.attempts == 2
    assert [(f.error_type, f.error_step) for f in outcome.failures] == [("format", "answer")]
    assert outcome.failures[0].raw_answer == '{"answer": null}'


async def test_a_rejected_request_fails_the_item_at_once() -> None:
    with ScriptedEndpoint(lambda seen, n: Reply(status=400)) as endpoint:
        async with client_for(endpoint) as client:
            outcome = await Harness(client, GenerationSettings()).generator.generate(make_job())
    assert not outcome.ok and outcome.permanent and outcome.attempts == 1
    assert endpoint.count() == 1
    assert outcome.failures[0].error_type == "bad_request"


async def test_an_authentication_failure_propagates_to_stop_the_run() -> None:
    with ScriptedEndpoint(lambda seen, n: Reply(status=401)) as endpoint:
        async with client_for(endpoint) as client:
            with pytest.raises(AuthenticationError):
                await Harness(client, GenerationSettings()).generator.generate(make_job())


async def test_known_ledger_responses_are_reused_without_calling_the_model() -> None:
    with ScriptedEndpoint() as endpoint:
        async with client_for(endpoint) as client:
            harness = Harness(client, GenerationSettings())
            first = await harness.generator.generate(make_job())
            known = {r.key: r.response_text or "" for r in harness.records if r.ok}
            again = await Harness(client, GenerationSettings()).generator.generate(
                make_job(known=dict(known)))
    assert endpoint.count() == 2
    assert again.ledger_hits == 2 and again.requests == 0
    assert first.result is not None and again.result is not None
    assert again.result.options == first.result.options


async def test_regenerating_carries_the_reason_and_previous_answer_and_makes_new_keys() -> None:
    with ScriptedEndpoint() as endpoint:
        async with client_for(endpoint) as client:
            base = Harness(client, GenerationSettings())
            await base.generator.generate(make_job())
            again = Harness(client, GenerationSettings())
            outcome = await again.generator.generate(make_job(
                regeneration=1, regenerate_scope=RegenerateScope.WHOLE,
                regenerate_reason="the bicycle is blue", previous_answer="a red bicycle",
                previous_distractors=["wrong option 1"],
            ))
    assert outcome.ok
    prompt = endpoint.seen[2].prompt
    assert "the bicycle is blue" in prompt and "Previous answer: a red bicycle" in prompt
    assert {r.key for r in base.records}.isdisjoint({r.key for r in again.records})


async def test_regenerating_distractors_keeps_the_answer_and_makes_one_call() -> None:
    with ScriptedEndpoint() as endpoint:
        async with client_for(endpoint) as client:
            outcome = await Harness(client, GenerationSettings()).generator.generate(make_job(
                regeneration=2, regenerate_scope=RegenerateScope.DISTRACTORS,
                regenerate_reason="too easy", previous_answer="a green kite",
                previous_explanation="It flies.", previous_distractors=["a dog", "a cat"],
            ))
    assert outcome.result is not None
    assert [s.role for s in endpoint.seen] == ["distractors"]
    assert "Correct answer: a green kite" in endpoint.seen[0].prompt
    assert "a dog; a cat" in endpoint.seen[0].prompt and "too easy" in endpoint.seen[0].prompt
    assert outcome.result.answer == "a green kite"
    assert outcome.result.explanation == "It flies."
    assert "a green kite" in outcome.result.options.values()


async def test_an_item_that_already_used_its_attempts_makes_no_request() -> None:
    with ScriptedEndpoint() as endpoint:
        async with client_for(endpoint) as client:
            outcome = await Harness(client, GenerationSettings(attempt_limit=2)).generator.generate(
                make_job(attempts_used=2))
    assert not outcome.ok and endpoint.count() == 0
    assert outcome.failures[0].error_type == "attempt_limit"


async def test_an_unreadable_image_fails_the_item_without_a_request() -> None:
    async def missing() -> bytes:
        raise FileNotFoundError(2, "No such file or directory")

    with ScriptedEndpoint() as endpoint:
        async with client_for(endpoint) as client:
            outcome = await Harness(client, GenerationSettings()).generator.generate(
                make_job(load_image=missing))
    assert not outcome.ok and outcome.permanent and endpoint.count() == 0
    assert outcome.failures[0].error_step == Step.IMAGE
