"""`python -m vqa_engine generate`: the command-line pipeline, run as a real subprocess
against a simulated endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.generation_data import tiny_jpeg
from vqa_engine.simulator import ForcedFault, SimulatorConfig, SimulatorServer

ROOT = Path(__file__).resolve().parents[1]


def write_input(folder: Path, multiple_choice: int, fill_in_blank: int = 0) -> Path:
    images = folder / "pictures"
    images.mkdir(parents=True)
    rows = []
    for index in range(multiple_choice + fill_in_blank):
        name = f"p{index % 7}.jpg"
        if not (images / name).exists():
            (images / name).write_bytes(tiny_jpeg(index % 7 + 1, size=24))
        rows.append({
            "id": f"item-{index}",
            "question": f"What colour is the picture {index}?",
            "question_type": "multiple_choice" if index < multiple_choice else "fill_in_blank",
            "image": f"pictures/{name}",
            "source": "unit-test",
        })
    path = folder / "questions.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VQA_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def generate_command(input_path: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "vqa_engine", "generate", str(input_path), str(out), *args]


def run_generate(input_path: Path, out: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(generate_command(input_path, out, *args), cwd=ROOT,
                          env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def read_json(path: Path) -> list[dict[str, object]]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def test_generate_imports_generates_and_writes_results_in_the_pipeline_layout(
    workdir: Path, simulator: SimulatorServer,
) -> None:
    source = write_input(workdir / "in", multiple_choice=5, fill_in_blank=3)
    out = workdir / "out"
    done = run_generate(source, out, "--base-url", simulator.base_url, "--model", "sim",
                        "--concurrency", "4")
    assert done.returncode == 0, done.stderr
    results = read_json(out / "results.json")
    assert read_json(out / "errors.json") == []
    assert sorted(r["id"] for r in results) == sorted(f"item-{i}" for i in range(8))
    for record in results:
        assert record["source"] == "unit-test"  # extra input fields kept
        if record["question_type"] == "multiple_choice":
            options = record["options"]
            assert isinstance(options, dict) and record["answer"] in options
            assert options[record["answer"]] == record["correct_option"]
            assert str(record["full_question"]).count("\n") == len(options)
        else:
            assert record["options"] == {} and record["answer"]
    assert "8 item(s) generated" in done.stdout
    assert simulator.stats.requests == 5 * 2 + 3


def test_running_the_same_command_again_pays_for_nothing(
    workdir: Path, simulator: SimulatorServer,
) -> None:
    source = write_input(workdir / "in", multiple_choice=4, fill_in_blank=1)
    out = workdir / "out"
    args = ("--base-url", simulator.base_url, "--model", "sim")
    first = run_generate(source, out, *args)
    assert first.returncode == 0, first.stderr
    requests = simulator.stats.requests
    again = run_generate(source, out, *args)
    assert again.returncode == 0, again.stderr
    assert simulator.stats.requests == requests
    assert "already generated" in again.stdout
    assert len(read_json(out / "results.json")) == 5


def test_failed_items_are_listed_in_errors_json_and_the_run_still_exits_zero(
    workdir: Path,
) -> None:
    def responder(role: str, prompt: str) -> str | ForcedFault:
        if "picture 2?" in prompt:
            return ForcedFault("400")
        if role == "distractors":
            return '{"options": ["green", "blue", "black"]}'
        return '{"answer": "red", "explanation": "mostly red"}'

    source = write_input(workdir / "in", multiple_choice=3, fill_in_blank=1)
    out = workdir / "out"
    with SimulatorServer(SimulatorConfig(latency_ms=1, responder=responder)) as server:
        done = run_generate(source, out, "--base-url", server.base_url, "--model", "sim")
    assert done.returncode == 0, done.stderr
    errors = read_json(out / "errors.json")
    assert len(errors) == 1
    error = errors[0]
    assert error["id"] == "item-2" and error["source"] == "unit-test"
    assert error["question"] == "What colour is the picture 2?"
    assert (error["error_type"], error["error_step"]) == ("bad_request", "answer")
    assert "HTTP 400" in str(error["message"])
    assert len(read_json(out / "results.json")) == 3
    assert "1 item(s) failed" in done.stdout


def test_a_run_in_which_every_item_failed_exits_non_zero(workdir: Path) -> None:
    source = write_input(workdir / "in", multiple_choice=1, fill_in_blank=1)
    out = workdir / "out"
    done = run_generate(source, out, "--base-url", "http://127.0.0.1:9/v1", "--retries", "0")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: no item was generated: all 2 failed")
    assert {e["error_type"] for e in read_json(out / "errors.json")} == {"connection"}


def test_a_refused_key_exits_non_zero_with_one_line_on_stderr(workdir: Path) -> None:
    source = write_input(workdir / "in", multiple_choice=2)
    with SimulatorServer(SimulatorConfig(latency_ms=1, api_key="sk-right-key-0000")) as server:
        done = run_generate(source, workdir / "out", "--base-url", server.base_url,
                            env=clean_env(VQA_API_KEY="sk-wrong-key-1234"))
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: HTTP 401") and "VQA_API_KEY" in lines[0]
    assert "sk-wrong-key-1234" not in done.stderr + done.stdout


def test_base_url_and_model_come_from_the_environment(workdir: Path,
                                                      simulator: SimulatorServer) -> None:
    source = write_input(workdir / "in", multiple_choice=0, fill_in_blank=2)
    done = run_generate(source, workdir / "out",
                        env=clean_env(VQA_BASE_URL=simulator.base_url, VQA_MODEL="Env-Model"))
    assert done.returncode == 0, done.stderr
    record = read_json(workdir / "out" / "results.json")[0]
    assert record["review"]["model"] == "env-model"  # type: ignore[index]


def test_concurrency_one_is_sequential(workdir: Path, simulator: SimulatorServer) -> None:
    source = write_input(workdir / "in", multiple_choice=3)
    done = run_generate(source, workdir / "out", "--base-url", simulator.base_url,
                        "--concurrency", "1")
    assert done.returncode == 0, done.stderr
    assert simulator.stats.peak_in_flight == 1


def test_a_missing_api_key_variable_fails_fast(workdir: Path) -> None:
    source = write_input(workdir / "in", multiple_choice=1)
    done = run_generate(source, workdir / "out", "--api-key-env", "NOT_SET_ANYWHERE")
    assert done.returncode == 1
    assert "NOT_SET_ANYWHERE" in done.stderr and "export" in done.stderr


# ---------------------------------------------------------------- crash and resume


@pytest.fixture
def slow_simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(latency_ms=150, jitter_ms=50, seed=3)) as server:
        yield server


def generated_count(database: Path) -> int:
    try:
        with sqlite3.connect(database, timeout=5) as connection:
            row = connection.execute(
                "SELECT count(*) FROM items WHERE status = 'generated'").fetchone()
            return int(row[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_killed_mid_run_and_run_again_completes_without_paying_twice(
    workdir: Path, slow_simulator: SimulatorServer,
) -> None:
    concurrency = 6
    items = 60
    source = write_input(workdir / "in", multiple_choice=items)
    out = workdir / "out"
    args = ("--base-url", slow_simulator.base_url, "--model", "sim", "--concurrency",
            str(concurrency))
    process = subprocess.Popen(generate_command(source, out, *args), cwd=ROOT, env=clean_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while generated_count(out / "vqa.db") < 12:
            assert process.poll() is None, "generate ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert generated_count(out / "vqa.db") < items

    again = run_generate(source, out, *args)
    assert again.returncode == 0, again.stderr
    assert len(read_json(out / "results.json")) == items
    assert read_json(out / "errors.json") == []

    with sqlite3.connect(out / "vqa.db") as connection:
        paid_twice = connection.execute(
            "SELECT count(*) FROM (SELECT key FROM ledger WHERE ok GROUP BY key "
            "HAVING count(*) > 1)").fetchone()[0]
        ledger_ok = connection.execute("SELECT count(*) FROM ledger WHERE ok").fetchone()[0]
    assert paid_twice == 0
    assert ledger_ok == items * 2
    repeated = sum(count - 1 for count in slow_simulator.stats.repeated().values())
    assert repeated <= concurrency, f"{repeated} requests were sent twice"
    assert slow_simulator.stats.requests == items * 2 + repeated

    third = run_generate(source, out, *args)
    assert third.returncode == 0 and slow_simulator.stats.requests == items * 2 + repeated
    assert len(read_json(out / "results.json")) == items
