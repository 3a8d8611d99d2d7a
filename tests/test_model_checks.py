"""Model-based checks: reading the picked letter, rotations, verdicts, and whole runs against
the simulator serving crafted check replies (blind flags, circular flags, failed checks that
leave the item generated, a re-run that pays for no check again), the run estimate and the
`generate` flags."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db.engine import Database
from db.models import Generation, ItemStatus, LedgerEntry, Run, RunStatus
from db.queries import ItemFilter, list_items
from vqa_engine.cli import build_parser
from vqa_engine.client import RetryPolicy, Timeouts
from vqa_engine.errors import FormatError
from vqa_engine.host import EngineHost
from vqa_engine.model_checks import (
    BLIND_ANSWERABLE,
    CHECK_INCOMPLETE,
    CIRCULAR_INCONSISTENT,
    CheckAnswer,
    ModelChecks,
    judge,
    original_letter,
    parse_choice,
    rotate_options,
)
from vqa_engine.pipeline import PipelineOptions, settings_for
from vqa_engine.prompts import check_prompt, prompt_role, read_check_prompt
from vqa_engine.run_estimate import estimate_run
from vqa_engine.runs import ItemSelection, RunProgress, RunSettings, run_progress, start_run
from vqa_engine.settings import Endpoint
from vqa_engine.simulator import ForcedFault, SimulatorConfig, SimulatorServer
from vqa_engine.worker import WorkerSettings
from tests.generation_data import items_of, seed_dataset
from tests.test_cli_generate import clean_env, write_input

OPTIONS = {"A": "red", "B": "blue", "C": "green", "D": "a red car"}

# ---------------------------------------------------------------- reading the letter


@pytest.mark.parametrize(("text", "letter"), [
    ("B", "B"),
    ("B.", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("**B**", "B"),
    ("B) blue", "B"),
    ("C - green", "C"),
    ("The answer is (B)", "B"),
    ("The answer is B.", "B"),
    ("Answer: **D**", "D"),
    ("I think A is wrong. The correct option is C.", "C"),
    ('{"choice": "B"}', "B"),
    ('{"answer": "B"}', "B"),
    ('```json\n{"answer": "B. blue"}\n```', "B"),
    ('Sure! {"choice": "(C)"}', "C"),
    ("答案：B", "B"),
    ("答案是B。", "B"),
    ("正确答案为 C", "C"),
    ("我选B", "B"),
    ("<think>A or C?</think>C", "C"),
    ("blue", "B"),
    ("The answer is a red car.", "D"),
    ("It is B because the sky is blue", "B"),
])
def test_parse_choice_reads_the_picked_letter_from_crafted_outputs(text: str, letter: str) -> None:
    assert parse_choice(text, OPTIONS).letter == letter


@pytest.mark.parametrize("text", [
    "",
    "   ",
    "I cannot see the image.",
    "A or B",
    '{"choice": "Z"}',
    '{"choice": null}',
    "Looking at it, A red car",
    "<think>it is B",
])
def test_parse_choice_refuses_text_naming_no_single_option_letter(text: str) -> None:
    with pytest.raises(FormatError) as caught:
        parse_choice(text, OPTIONS)
    assert "no option letter A-D" in str(caught.value)


# ---------------------------------------------------------------- rotations and prompts


def test_rotation_k_puts_option_i_at_position_i_plus_k_and_maps_back() -> None:
    letters = list(OPTIONS)
    texts = list(OPTIONS.values())
    for rotation in range(len(letters)):
        shown = rotate_options(OPTIONS, rotation)
        assert list(shown) == letters and sorted(shown.values()) == sorted(texts)
        for index, text in enumerate(texts):
            position = (index + rotation) % len(letters)
            assert shown[letters[position]] == text
            assert original_letter(letters, letters[position], rotation) == letters[index]
    assert rotate_options(OPTIONS, 1) == {"A": "a red car", "B": "red", "C": "blue", "D": "green"}


def test_check_prompts_list_the_options_and_are_recognised_in_english_and_chinese() -> None:
    blind = check_prompt("Which colour is the car?", OPTIONS, blind=True)
    seeing = check_prompt("Which colour is the car?", OPTIONS, blind=False)
    chinese = check_prompt("汽车是什么颜色？", {"A": "红色", "B": "蓝色"}, blind=True)
    for prompt in (blind, seeing, chinese):
        assert prompt_role(prompt) == "check"
    assert read_check_prompt(blind).options == OPTIONS
    assert read_check_prompt(blind).blind and not read_check_prompt(seeing).blind
    assert "image" in seeing and "No image" in blind
    assert read_check_prompt(chinese).options == {"A": "红色", "B": "蓝色"}
    assert read_check_prompt(chinese).question == "汽车是什么颜色？"
    assert "没有附带图片" in chinese


# ---------------------------------------------------------------- verdicts


def blind(letter: str | None, problem: str | None = None) -> CheckAnswer:
    return CheckAnswer("blind", 0, letter, problem)


def circular(*letters: str | None) -> list[CheckAnswer]:
    return [CheckAnswer("circular", k, letter, None if letter else "format: no letter")
            for k, letter in enumerate(letters)]


def reasons(flags: dict[str, dict[str, str]]) -> dict[str, str]:
    return {name: value["reason"] for name, value in flags.items()}


def test_blind_flags_only_a_correct_pick() -> None:
    assert reasons(judge([blind("B")], "B", 4)) == {
        BLIND_ANSWERABLE: "answered B correctly without the image"}
    assert judge([blind("C")], "B", 4) == {}


def test_circular_flags_a_moving_pick_or_a_stable_wrong_one_and_passes_a_stable_right_one() -> None:
    assert reasons(judge(circular("A", "C", "A", "A"), "A", 4)) == {
        CIRCULAR_INCONSISTENT: "picked A, C, A, A over 4 rotations; recorded answer is A"}
    assert reasons(judge(circular("B", "B", "B"), "A", 3)) == {
        CIRCULAR_INCONSISTENT: "picked B, B, B over 3 rotations; recorded answer is A"}
    assert judge(circular("A", "A", "A", "A"), "A", 4) == {}


def test_checks_without_a_letter_are_incomplete_unless_the_answers_already_disagree() -> None:
    flags = judge([blind(None, "server_error: 500"), *circular("A", None, "A")], "A", 3)
    assert set(flags) == {CHECK_INCOMPLETE}
    assert "blind check not done (server_error: 500)" in flags[CHECK_INCOMPLETE]["reason"]
    assert "circular check not done: 2 of 3 rotations answered" in \
        flags[CHECK_INCOMPLETE]["reason"]
    flags = judge(circular("A", None, "C"), "A", 3)
    assert reasons(flags) == {
        CIRCULAR_INCONSISTENT: "picked A, ?, C over 3 rotations; recorded answer is A"}


def test_model_checks_are_stored_with_the_run_settings_and_old_configs_still_load() -> None:
    settings = RunSettings(model_checks=ModelChecks(blind=True, circular=True))
    config = settings.to_config()
    assert config["model_checks"] == {"blind": True, "circular": True}
    assert RunSettings.from_config(config) == settings
    assert "model_checks" not in RunSettings().to_config()  # older runs compare equal
    old = RunSettings().to_config()
    assert RunSettings.from_config(old).model_checks == ModelChecks()


# ---------------------------------------------------------------- whole runs

FAST = WorkerSettings(poll_interval=0.05, heartbeat_interval=0.5, pause_grace=0.3)
QUICK_RETRY = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02, retry_after_cap=1.0)
ANSWERS = {"Which fruit is on the plate?": "apple", "Which animal sits on the mat?": "dog",
           "Which vehicle is parked?": "bus", "Which tool lies on the bench?": "hammer"}
WRONG = ["stone", "cloud", "river", "candle"]


def run_settings(checks: ModelChecks) -> RunSettings:
    return RunSettings(concurrency=4, batch_size=4, retry=QUICK_RETRY, model_checks=checks,
                       timeouts=Timeouts(connect=2, first_byte=2, total=5))


@pytest.fixture
def host(database: Database, data_dir: Path) -> Iterator[Callable[[], EngineHost]]:
    hosts: list[EngineHost] = []

    def make() -> EngineHost:
        engine = EngineHost(database, data=data_dir, settings=FAST)
        engine.start()
        hosts.append(engine)
        return engine

    yield make
    for engine in hosts:
        engine.stop(10)


def wait_finished(database: Database, run_id: int, timeout: float = 20.0) -> RunProgress:
    deadline = time.monotonic() + timeout
    while True:
        progress = run_progress(database, run_id)
        if progress.status.is_finished:
            return progress
        assert time.monotonic() < deadline, f"run {run_id} did not finish: {progress}"
        time.sleep(0.05)


CheckReply = Callable[[str, dict[str, str], bool], "str | ForcedFault"]


def crafted(check: CheckReply) -> Callable[[str, str], "str | ForcedFault"]:
    """A simulator responder: fixed answers and distractors per question, and the test's own
    reply to each check prompt (question, options shown, blind)."""

    def respond(role: str, prompt: str) -> str | ForcedFault:
        question = next((q for q in ANSWERS if q in prompt), "")
        if role == "answer":
            return json.dumps({"answer": ANSWERS.get(question, "unknown"),
                               "explanation": "It is plain to see."})
        if role == "distractors":
            count = int(re.findall(r"exactly (\d+)", prompt)[-1])
            return json.dumps({"options": WRONG[:count]})
        if role == "check":
            ask = read_check_prompt(prompt)
            return check(ask.question, ask.options, ask.blind)
        return "OK"

    return respond


def letter_of(options: dict[str, str], text: str) -> str:
    return next(letter for letter, option in options.items() if option == text)


def current_generations(database: Database, dataset_id: int) -> dict[str, Generation]:
    items = items_of(database, dataset_id)
    with database.read() as session:
        rows = {g.id: g for g in session.scalars(select(Generation).where(
            Generation.id.in_([i.current_generation_id for i in items])))}
    return {item.question: rows[item.current_generation_id] for item in items
            if item.current_generation_id}


def check_rows(database: Database) -> list[LedgerEntry]:
    with database.read() as session:
        return list(session.scalars(select(LedgerEntry).where(LedgerEntry.role == "check")))


def test_blind_check_flags_the_item_the_model_answers_without_the_image(
    database: Database, data_dir: Path, simulator: SimulatorServer,
    host: Callable[[], EngineHost],
) -> None:
    fruit, animal = "Which fruit is on the plate?", "Which animal sits on the mat?"
    dataset = seed_dataset(database, data_dir, multiple_choice=2, fill_in_blank=1,
                           questions=[fruit, animal, "Which tool lies on the bench?"])
    formats = itertools.cycle(["The answer is ({})", "答案：{}", '{{"answer": "{}"}}'])

    def check(question: str, options: dict[str, str], blind: bool) -> str:
        assert blind
        if question == fruit:  # "apple" among stone / cloud...: no image needed
            return next(formats).format(letter_of(options, "apple"))
        return next(formats).format(letter_of(options, "stone"))

    simulator.reconfigure(responder=crafted(check))
    run_id = start_run(database, dataset, Endpoint(simulator.base_url, "simulated-vlm"),
                       run_settings(ModelChecks(blind=True)))
    host()
    progress = wait_finished(database, run_id)

    assert progress.status is RunStatus.COMPLETED and progress.generated == 3
    generations = current_generations(database, dataset)
    flagged = generations[fruit]
    assert flagged.quality_flags[BLIND_ANSWERABLE]["reason"] == (
        f"answered {flagged.correct_letter} correctly without the image")
    assert not {BLIND_ANSWERABLE, CHECK_INCOMPLETE} & set(generations[animal].quality_flags)
    assert generations["Which tool lies on the bench?"].quality_flags == {}  # fill-in-blank
    assert simulator.stats.by_role["check"] == 2
    assert simulator.stats.with_image["check"] == 0  # blind: no image sent
    assert progress.requests == 2 * 2 + 1 + 2 == simulator.stats.requests
    assert len(check_rows(database)) == 2
    with database.read() as session:
        found = list_items(session, ItemFilter(dataset_id=dataset, flag=BLIND_ANSWERABLE))
    assert [row.question for row in found] == [fruit]


def test_circular_check_flags_a_pick_that_moves_and_passes_a_consistent_one(
    database: Database, data_dir: Path, simulator: SimulatorServer,
    host: Callable[[], EngineHost],
) -> None:
    steady, biased = "Which vehicle is parked?", "Which animal sits on the mat?"
    dataset = seed_dataset(database, data_dir, multiple_choice=2, questions=[steady, biased])

    def check(question: str, options: dict[str, str], blind: bool) -> str:
        assert not blind
        if question == steady:
            return f"The answer is ({letter_of(options, 'bus')})"
        return "A"  # whatever sits first: a position bias

    simulator.reconfigure(responder=crafted(check))
    run_id = start_run(database, dataset, Endpoint(simulator.base_url, "simulated-vlm"),
                       run_settings(ModelChecks(circular=True)))
    host()
    progress = wait_finished(database, run_id)

    assert progress.status is RunStatus.COMPLETED and progress.generated == 2
    generations = current_generations(database, dataset)
    assert not {CIRCULAR_INCONSISTENT, CHECK_INCOMPLETE} & set(generations[steady].quality_flags)
    moved = generations[biased]
    count = len(moved.options)
    picks = ", ".join(list(moved.options)[(-k) % count] for k in range(count))
    assert moved.quality_flags[CIRCULAR_INCONSISTENT]["reason"] == (
        f"picked {picks} over {count} rotations; recorded answer is {moved.correct_letter}")
    rotations = sum(len(g.options) for g in generations.values())
    assert simulator.stats.by_role["check"] == rotations == len(check_rows(database))
    assert simulator.stats.with_image["check"] == rotations
    assert progress.requests == 2 * 2 + rotations


def test_failed_or_unreadable_checks_leave_the_item_generated_and_say_so(
    database: Database, data_dir: Path, simulator: SimulatorServer,
    host: Callable[[], EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=1,
                           questions=["Which tool lies on the bench?"])

    def check(question: str, options: dict[str, str], blind: bool) -> str | ForcedFault:
        return "I would need to see the image." if blind else ForcedFault("500")

    simulator.reconfigure(responder=crafted(check))
    run_id = start_run(database, dataset, Endpoint(simulator.base_url, "simulated-vlm"),
                       run_settings(ModelChecks(blind=True, circular=True)))
    host()
    progress = wait_finished(database, run_id)

    assert progress.status is RunStatus.COMPLETED
    assert (progress.generated, progress.failed) == (1, 0)
    [item] = items_of(database, dataset)
    assert item.status is ItemStatus.GENERATED and item.attempts == 1
    generation = current_generations(database, dataset)[item.question]
    assert generation.ok and generation.answer == "hammer"
    flags = generation.quality_flags
    assert not {BLIND_ANSWERABLE, CIRCULAR_INCONSISTENT} & set(flags)
    reason = flags[CHECK_INCOMPLETE]["reason"]
    assert reason == (
        "blind check not done (the reply named no option letter); circular check not done: "
        f"0 of {len(generation.options)} rotations answered (server)")
    assert progress.errors_by_type["server"] >= len(generation.options)
    assert progress.errors_by_type["format"] == 1
    assert all(not row.ok for row in check_rows(database))


def test_a_rerun_answers_every_check_from_the_ledger(
    database: Database, data_dir: Path, simulator: SimulatorServer,
    host: Callable[[], EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=3, fill_in_blank=1)
    endpoint = Endpoint(simulator.base_url, "simulated-vlm")
    settings = run_settings(ModelChecks(blind=True, circular=True))
    first = start_run(database, dataset, endpoint, settings)
    host()
    wait_finished(database, first)
    flags_before = {q: g.quality_flags for q, g in current_generations(database, dataset).items()}
    requests = simulator.stats.requests
    checks = simulator.stats.by_role["check"]
    assert checks > 3

    second = start_run(database, dataset, endpoint, settings, ItemSelection.ALL)
    progress = wait_finished(database, second)
    assert progress.status is RunStatus.COMPLETED and progress.generated == 4
    assert simulator.stats.requests == requests and progress.requests == 0
    assert progress.ledger_hits == 3 * 2 + 1 + checks
    flags_after = {q: g.quality_flags for q, g in current_generations(database, dataset).items()}
    assert flags_after == flags_before


# ---------------------------------------------------------------- estimate and CLI


def test_the_estimate_counts_check_requests_per_multiple_choice_item(
    database: Database, data_dir: Path,
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=3, fill_in_blank=2)
    plain = estimate_run(database, dataset, ItemSelection.PENDING)
    assert (plain.requests, plain.check_requests, plain.total_requests) == (8, 0, 8)
    blind = estimate_run(database, dataset, ItemSelection.PENDING,
                         checks=ModelChecks(blind=True))
    assert (blind.blind_check_requests, blind.circular_check_requests) == (3, 0)
    assert blind.total_requests == 11 and blind.image_tokens == plain.image_tokens
    both = estimate_run(database, dataset, ItemSelection.PENDING,
                        checks=ModelChecks(blind=True, circular=True), max_options=5)
    assert (both.blind_check_requests, both.circular_check_requests) == (3, 15)
    assert both.total_requests == 8 + 3 + 15
    per_image = plain.image_tokens // plain.requests
    assert both.image_tokens == plain.image_tokens + 15 * per_image
    assert ModelChecks(blind=True, circular=True).extra_requests(4) == 5


def test_generate_takes_blind_and_circular_check_flags(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["generate", "in.json", str(tmp_path), "--blind-check", "--circular-check"])
    assert args.blind_check and args.circular_check
    options = PipelineOptions(input=Path("in.json"), out_dir=tmp_path,
                              blind_check=args.blind_check, circular_check=args.circular_check)
    assert settings_for(options).model_checks == ModelChecks(blind=True, circular=True)
    plain = build_parser().parse_args(["generate", "in.json", str(tmp_path)])
    assert not plain.blind_check and not plain.circular_check



# ---------------------------------------------------------------- the Runs page


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def page_env(data_dir: Path, simulator: SimulatorServer,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The dashboard against the simulator, without an engine host (the test reads the run row)."""
    monkeypatch.setenv("VQA_BASE_URL", simulator.base_url)
    monkeypatch.setenv("VQA_EMBEDDED_WORKER", "0")
    monkeypatch.chdir(ROOT)
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


def test_runs_page_check_boxes_add_their_requests_to_the_estimate_and_the_run(
    page_env: None, data_dir: Path, database: Database,
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=3, fill_in_blank=2)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params.update(dataset=str(dataset))
    at.run()
    at.switch_page("pages/2_Runs.py").run()
    assert not at.exception, at.exception

    def estimate() -> str:
        return next(i.value for i in at.info if i.value.startswith("Estimate"))

    assert "at most 8 requests," in estimate()
    blind_box = at.checkbox(key="run_blind_check")
    assert "1 extra request per multiple-choice item" in blind_box.help
    assert "up to 5" in at.checkbox(key="run_circular_check").help
    blind_box.check().run()
    assert "at most 11 requests (8 to generate, 3 blind check)" in estimate()
    at.checkbox(key="run_circular_check").check().run()
    assert ("at most 26 requests (8 to generate, 3 blind check, 15 circular check; "
            "circular counted at 5 options per item)") in estimate()
    at.button(key="run_start").click().run()
    assert not at.exception, at.exception
    with database.read() as session:
        [run] = list(session.scalars(select(Run)))
    assert RunSettings.from_config(run.config["settings"]).model_checks == ModelChecks(
        blind=True, circular=True)


def test_generate_command_runs_the_checks_and_sums_up_their_flags(tmp_path: Path) -> None:
    questions = write_input(tmp_path, multiple_choice=3, fill_in_blank=1)
    config = SimulatorConfig(latency_ms=1, seed=0, check_strategy="first")  # position bias
    with SimulatorServer(config) as server:
        done = subprocess.run(
            [sys.executable, "-m", "vqa_engine", "generate", str(questions),
             str(tmp_path / "out"), "--blind-check", "--circular-check"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            env=clean_env(VQA_BASE_URL=server.base_url, VQA_MODEL="simulated-vlm"))
        checks = server.stats.by_role["check"]
        blind_sent = checks - server.stats.with_image["check"]
    assert done.returncode == 0, done.stderr
    assert blind_sent == 3 and checks > 3 + 3  # 1 blind + n rotations per item
    summary = re.search(r"model checks: (\d+) blind_answerable, (\d+) circular_inconsistent, "
                        r"(\d+) check_incomplete", done.stdout)
    assert summary is not None, done.stdout
    assert summary.group(2) == "3" and summary.group(3) == "0"
    assert f"{2 * 3 + 1 + checks} request(s)" in done.stdout
