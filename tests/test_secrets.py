"""The API key is used and never written down: not in the database, logs, outputs or error
messages, whatever goes wrong on the way."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from db.engine import Database
from db.models import Generation, LedgerEntry, Run, RunStatus
from vqa_engine.client import RetryPolicy
from vqa_engine.host import EngineHost
from vqa_engine.runs import ItemSelection, RunSettings, run_progress, start_run
from vqa_engine.settings import Endpoint
from vqa_engine.simulator import ForcedFault, SimulatorConfig, SimulatorServer
from vqa_engine.worker import WorkerSettings
from tests.generation_data import seed_dataset
from tests.test_cli_generate import ROOT, clean_env, generate_command, write_input

KEY = "sk-test-SECRET-9f3a1c7e5b2d8a4f6e0c"
WRONG = "sk-test-WRONG-77aa55bb33cc11dd"


def fragments(key: str) -> list[str]:
    """The key and its long middle part: a leak of either is a leak."""
    return [key, key[3:-4]]


def assert_no_key_in(blob: bytes | str, where: str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for key in (KEY, WRONG):
        for fragment in fragments(key):
            assert fragment.encode() not in data, f"the API key leaked into {where}"


def every_file(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def responder(role: str, prompt: str) -> str | ForcedFault:
    if "picture 1?" in prompt:
        return ForcedFault("400")
    if "picture 2?" in prompt and role == "distractors":
        return ForcedFault("500")
    if role == "distractors":
        return '{"options": ["green", "blue", "black"]}'
    return '{"answer": "red", "explanation": "mostly red"}'


def test_the_key_appears_nowhere_after_a_cli_run_with_failures(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in", multiple_choice=5, fill_in_blank=1)
    out = tmp_path / "out"
    config = SimulatorConfig(latency_ms=1, api_key=KEY, responder=responder)
    with SimulatorServer(config) as server:
        done = subprocess.run(
            generate_command(source, out, "--base-url", server.base_url, "--api-key-env",
                             "MY_VLM_KEY", "--retries", "1", "--verbose"),
            cwd=ROOT, env=clean_env(MY_VLM_KEY=KEY), capture_output=True, text=True,
            timeout=60)
        assert server.stats.by_outcome["401"] == 0  # the key was really used
    assert done.returncode == 0, done.stderr
    errors = json.loads((out / "errors.json").read_text())
    assert len(errors) == 2 and "key sk-...6e0c" in str(errors)
    assert "run 1" in done.stderr  # --verbose logs were produced, and checked below
    assert_no_key_in(done.stdout, "stdout")
    assert_no_key_in(done.stderr, "stderr and logs")
    files = every_file(out)
    assert any(path.name == "vqa.db" for path in files)
    for path in files:  # the database (with its WAL), results, errors, images
        assert_no_key_in(path.read_bytes(), str(path.relative_to(out)))


def test_a_refused_key_is_shown_only_masked(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in", multiple_choice=2)
    out = tmp_path / "out"
    with SimulatorServer(SimulatorConfig(latency_ms=1, api_key=KEY)) as server:
        done = subprocess.run(
            generate_command(source, out, "--base-url", server.base_url, "--verbose"),
            cwd=ROOT, env=clean_env(VQA_API_KEY=WRONG), capture_output=True, text=True,
            timeout=60)
    assert done.returncode == 1
    assert "sk-...11dd" in done.stderr
    assert_no_key_in(done.stdout + done.stderr, "the output of a refused run")
    for path in every_file(out):
        assert_no_key_in(path.read_bytes(), str(path.relative_to(out)))


def test_a_run_form_key_stays_in_memory_only(
    database: Database, data_dir: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dataset = seed_dataset(database, data_dir, multiple_choice=3)
    with SimulatorServer(SimulatorConfig(latency_ms=1, api_key=KEY, responder=responder)) as sim:
        endpoint = Endpoint(base_url=sim.base_url, model="m", api_key=KEY,
                            key_source="the run form")
        host = EngineHost(database, data=data_dir, settings=WorkerSettings(poll_interval=0.05))
        host.start()
        try:
            run_id = host.launch_run(dataset, endpoint, RunSettings(
                concurrency=2, retry=RetryPolicy(max_retries=1, base_delay=0.01)))
            deadline = time.monotonic() + 20
            while not run_progress(database, run_id).status.is_finished:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            host.stop()
        wrong = Endpoint(base_url=sim.base_url, model="m", api_key=WRONG,
                         key_source="the run form")
        refused = start_run(database, dataset, wrong, RunSettings(), ItemSelection.ALL)
        host = EngineHost(database, data=data_dir, settings=WorkerSettings(poll_interval=0.05))
        host.provide_key(refused, WRONG)
        host.start()
        try:
            deadline = time.monotonic() + 20
            while not run_progress(database, refused).status.is_finished:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            host.stop()
    progress = run_progress(database, refused)
    assert progress.status is RunStatus.FAILED and "sk-...11dd" in (progress.message or "")
    with database.read() as session:
        configs = [run.config for run in session.scalars(select(Run))]
        messages = [g.error_message or "" for g in session.scalars(select(Generation))]
        ledger = [(e.error_message or "") + (e.response_text or "")
                  for e in session.scalars(select(LedgerEntry))]
    assert configs[0]["key_origin"] == {"kind": "form", "name": None}
    assert_no_key_in(json.dumps(configs), "run configs")
    assert_no_key_in("\n".join(messages + ledger), "stored error messages")
    assert_no_key_in(caplog.text, "logs")
    assert_no_key_in(repr(endpoint) + repr(progress), "reprs")
    database.close()
    for path in every_file(data_dir):
        assert_no_key_in(path.read_bytes(), str(path.relative_to(data_dir)))
    assert os.environ.get("VQA_API_KEY") is None
