"""The simulated endpoint: plausible answers about the image, layouts, faults, stats, CLI."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from db.models import QuestionType
from vqa_engine.client import ChatRequest, ClientConfig, RetryPolicy, Timeouts, VLMClient
from vqa_engine.errors import (
    AuthenticationError,
    EndpointError,
    TruncatedError,
)
from vqa_engine.parsing import parse_answer, parse_distractors
from vqa_engine.prompts import answer_prompt, distractor_prompt
from vqa_engine.settings import Endpoint
from vqa_engine.simulator import (
    FAULT_NAMES,
    ForcedFault,
    SimulatorConfig,
    SimulatorServer,
    build_app,
    parse_faults,
    start_simulator,
)

ROOT = Path(__file__).resolve().parent.parent


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def body_for(prompt: str, image: bytes | None, model: str = "simulated-vlm") -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if image is not None:
        data = base64.b64encode(image).decode()
        content.append({"type": "image_url",
                        "image_url": {"url": f"data:image/jpeg;base64,{data}"}})
    content.append({"type": "text", "text": prompt})
    return {"model": model, "messages": [{"role": "user", "content": content}]}


async def post(base_url: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/chat/completions", json=body,
                                headers=headers) as response:
            return response.status, response.content_type, await response.text()


def content_of(text: str) -> str:
    return json.loads(text)["choices"][0]["message"]["content"]


def client_for(base_url: str, **changes: Any) -> VLMClient:
    config = ClientConfig(endpoint=Endpoint(base_url=base_url, model="simulated-vlm"),
                          retry=RetryPolicy(max_retries=0, base_delay=0.01),
                          timeouts=Timeouts(connect=2, first_byte=2, total=5))
    return VLMClient(replace(config, **changes))


# -- answers -------------------------------------------------------------------------------

async def test_answer_prompts_get_a_json_answer_about_the_image_colour_and_size():
    async with await start_simulator(SimulatorConfig(latency_ms=0, seed=1)) as sim:
        async with client_for(sim.base_url) as client:
            response = await client.complete(ChatRequest(
                answer_prompt("What colour is the wall?", QuestionType.MULTIPLE_CHOICE),
                jpeg((30, 60, 210), (120, 80))))
    parsed = parse_answer(response.text)
    assert parsed.method == "json" and parsed.answer == "blue"
    assert "120x80" in parsed.explanation
    assert response.prompt_tokens > 0 and response.completion_tokens > 0


async def test_chinese_and_counting_questions_get_fitting_answers():
    async with await start_simulator(SimulatorConfig(latency_ms=0)) as sim:
        async with client_for(sim.base_url) as client:
            chinese = await client.complete(ChatRequest(
                answer_prompt("图中墙是什么颜色？", QuestionType.FILL_IN_BLANK),
                jpeg((200, 30, 30))))
            counting = await client.complete(ChatRequest(
                answer_prompt("How many birds are there?", QuestionType.MULTIPLE_CHOICE),
                jpeg((200, 30, 30))))
    assert parse_answer(chinese.text).answer == "红色"
    assert parse_answer(counting.text).answer.isdigit()


async def test_distractor_prompts_get_the_requested_count_of_options_unlike_the_answer():
    async with await start_simulator(SimulatorConfig(latency_ms=0, seed=3)) as sim:
        async with client_for(sim.base_url) as client:
            for count in (2, 3, 4):
                response = await client.complete(ChatRequest(
                    distractor_prompt("What colour is the wall?", "red", count),
                    jpeg((200, 30, 30))))
                options = parse_distractors(response.text)
                assert options.method == "json" and len(options.options) == count
                assert len(set(options.options)) == count and "red" not in options.options
            digits = parse_distractors((await client.complete(ChatRequest(
                distractor_prompt("How many cats?", "3", 3), jpeg((0, 0, 0))))).text)
    assert all(option.isdigit() and option != "3" for option in digits.options)


async def test_a_large_image_is_read_at_draft_scale_and_its_full_size_reported():
    big = jpeg((40, 160, 60), (4000, 3000))
    async with await start_simulator(SimulatorConfig(latency_ms=0)) as sim:
        async with client_for(sim.base_url) as client:
            response = await client.complete(ChatRequest(
                answer_prompt("What colour?", QuestionType.MULTIPLE_CHOICE), big))
    parsed = parse_answer(response.text)
    assert parsed.answer == "green" and "4000x3000" in parsed.explanation


async def test_an_unreadable_image_is_a_400():
    async with await start_simulator(SimulatorConfig(latency_ms=0)) as sim:
        status, _, text = await post(sim.base_url, body_for("What?", b"not a jpeg at all"))
        assert status == 400 and "could not read the image" in text
        assert sim.stats.by_outcome["bad_image"] == 1


async def test_models_endpoint_lists_the_simulated_model():
    async with await start_simulator(SimulatorConfig(model="sim-7b")) as sim:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{sim.base_url}/models") as response:
                listed = await response.json()
    assert [entry["id"] for entry in listed["data"]] == ["sim-7b"]


# -- stats and scripting -------------------------------------------------------------------

async def test_stats_count_roles_outcomes_and_repeated_bodies():
    async with await start_simulator(SimulatorConfig(latency_ms=0)) as sim:
        image = jpeg((10, 10, 10))
        answer = body_for(answer_prompt("Q?", QuestionType.FILL_IN_BLANK), image)
        options = body_for(distractor_prompt("Q?", "a", 2), image)
        for body in (answer, options, answer):
            status, _, _ = await post(sim.base_url, body)
            assert status == 200
        stats = sim.stats
        assert stats.requests == 3
        assert stats.by_role == {"answer": 2, "distractors": 1}
        assert stats.by_outcome == {"ok": 3}
        assert list(stats.repeated().values()) == [2]
        assert stats.snapshot()["repeated_bodies"] == 1


async def test_responder_scripts_exact_outputs_and_forced_faults():
    calls: list[tuple[str, str]] = []

    def responder(role: str, prompt: str) -> str | ForcedFault:
        calls.append((role, prompt))
        return ForcedFault("length") if "cut" in prompt else f"Answer: scripted {role}"

    async with await start_simulator(SimulatorConfig(latency_ms=0, responder=responder)) as sim:
        async with client_for(sim.base_url) as client:
            response = await client.complete(ChatRequest(
                answer_prompt("Q?", QuestionType.MULTIPLE_CHOICE), None))
            with pytest.raises(TruncatedError):
                await client.complete(ChatRequest("please cut this", None))
    assert response.text == "Answer: scripted answer"
    assert [role for role, _ in calls] == ["answer", "other"]


async def test_requests_without_the_configured_key_get_401():
    config = SimulatorConfig(latency_ms=0, api_key="sk-simulated-key-123456")
    async with await start_simulator(config) as sim:
        async with client_for(sim.base_url) as client:
            with pytest.raises(AuthenticationError):
                await client.complete(ChatRequest("hello", None))
        good = Endpoint(base_url=sim.base_url, model="m", api_key="sk-simulated-key-123456")
        async with VLMClient(ClientConfig(endpoint=good)) as client:
            assert (await client.complete(ChatRequest("hello", None))).text


async def test_strict_model_names_get_404_for_other_models():
    async with await start_simulator(SimulatorConfig(latency_ms=0, strict_model=True)) as sim:
        status, _, _ = await post(sim.base_url, body_for("hi", None, model="other"))
        assert status == 404
        status, _, _ = await post(sim.base_url, body_for("hi", None))
        assert status == 200


# -- faults --------------------------------------------------------------------------------

EXPECTED_FAULTS = {
    "400": (400, "application/json"), "401": (401, "application/json"),
    "403": (403, "application/json"), "404": (404, "application/json"),
    "413": (413, "application/json"), "429": (429, "application/json"),
    "500": (500, "application/json"), "503": (503, "application/json"),
    "502": (502, "text/html"), "html": (200, "text/html"),
}


@pytest.mark.parametrize("fault", sorted(EXPECTED_FAULTS))
async def test_status_faults_answer_with_their_status_and_body_kind(fault):
    async with await start_simulator(SimulatorConfig(latency_ms=0, faults={fault: 1.0},
                                                     retry_after=2)) as sim:
        status, content_type, text = await post(sim.base_url, body_for("hi", None))
        assert (status, content_type) == EXPECTED_FAULTS[fault]
        assert sim.stats.by_outcome[fault] == 1


async def test_429_fault_sends_the_configured_retry_after():
    async with await start_simulator(SimulatorConfig(latency_ms=0, faults={"429": 1.0},
                                                     retry_after=7)) as sim:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{sim.base_url}/chat/completions",
                                    json=body_for("hi", None)) as response:
                assert response.headers["Retry-After"] == "7"


@pytest.mark.parametrize(("fault", "kind"), [
    ("reset", "EndpointConnectionError"), ("garbage", "MalformedResponseError"),
    ("empty", "EmptyContentError"), ("length", "TruncatedError"),
    ("stall", "EndpointTimeoutError"), ("500", "ServerError"), ("429", "RateLimitedError"),
])
async def test_body_and_connection_faults_reach_the_client_as_typed_errors(fault, kind):
    config = SimulatorConfig(latency_ms=0, faults={fault: 1.0}, stall_seconds=3.0)
    async with await start_simulator(config) as sim:
        async with client_for(sim.base_url,
                              timeouts=Timeouts(connect=1, first_byte=0.2, total=2)) as client:
            with pytest.raises(EndpointError) as caught:
                await client.complete(ChatRequest(
                    answer_prompt("Q?", QuestionType.MULTIPLE_CHOICE), jpeg((1, 2, 3))))
    assert type(caught.value).__name__ == kind


async def test_fault_rates_are_applied_about_as_often_as_asked():
    config = SimulatorConfig(latency_ms=0, seed=11, faults={"500": 0.3, "empty": 0.2})
    async with await start_simulator(config) as sim:
        for i in range(200):
            await post(sim.base_url, body_for(f"hi {i}", None))
        outcomes = sim.stats.by_outcome
    assert 35 <= outcomes["500"] <= 85
    assert 18 <= outcomes["empty"] <= 62
    assert outcomes["ok"] + outcomes["500"] + outcomes["empty"] == 200


def test_fault_specs_are_parsed_and_checked():
    assert parse_faults("429=0.1, 500=0.05,reset=0.01") == {"429": 0.1, "500": 0.05,
                                                            "reset": 0.01}
    assert parse_faults("") == {}
    for bad in ("teapot=0.1", "429", "429=lots", "429=0.9,500=0.2", "500=-0.1"):
        with pytest.raises(ValueError):
            parse_faults(bad)
    assert set(FAULT_NAMES) >= {"429", "500", "502", "503", "reset", "stall", "garbage",
                                "empty", "length", "html"}


# -- running it ----------------------------------------------------------------------------

def test_background_server_serves_sync_callers_and_stops_idempotently():
    server = SimulatorServer(SimulatorConfig(latency_ms=0))
    with server:
        assert server.base_url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=5) as response:
            assert json.load(response)["data"][0]["id"] == "simulated-vlm"
        server.reconfigure(faults={"503": 1.0})
        request = urllib.request.Request(
            f"{server.base_url}/chat/completions", data=json.dumps(body_for("x", None)).encode(),
            headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        assert caught.value.code == 503
        assert server.stats.by_outcome["503"] == 1
    server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.base_url}/models", timeout=2)


def test_the_shared_fixture_sees_every_distinct_request_once(simulator):
    async def run() -> None:
        async with client_for(simulator.base_url, concurrency=8) as client:
            await asyncio.gather(*(client.complete(ChatRequest(
                answer_prompt(f"What colour is thing {i}?", QuestionType.MULTIPLE_CHOICE),
                jpeg((i * 10 % 255, 100, 100)))) for i in range(40)))

    asyncio.run(run())
    stats = simulator.stats
    assert stats.requests == 40 and stats.repeated() == {}
    assert 1 < stats.peak_in_flight <= 8


def test_build_app_exposes_its_stats():
    app = build_app(SimulatorConfig())
    assert app["stats"].requests == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_cli_simulate_says_it_is_simulated_serves_and_stops_on_ctrl_c():
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "vqa_engine", "simulate", "--port", str(port),
         "--latency-ms", "0", "--faults", "500=0.0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "SIMULATED" in first and f"http://127.0.0.1:{port}/v1" in first
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models",
                                            timeout=2) as response:
                    assert response.status == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_rejects_unknown_faults():
    result = subprocess.run(
        [sys.executable, "-m", "vqa_engine", "simulate", "--faults", "teapot=0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "teapot" in result.stderr


async def test_bodies_with_escaped_slashes_and_image_like_prompts_are_still_understood():
    image = jpeg((30, 60, 210))
    body = body_for(answer_prompt('What colour? "data:image/png" is just text',
                                  QuestionType.MULTIPLE_CHOICE), image)
    escaped = json.dumps(body).replace("/", "\\/")
    async with await start_simulator(SimulatorConfig(latency_ms=0)) as sim:
        async with aiohttp.ClientSession() as session:
            for payload in (json.dumps(body), escaped):
                async with session.post(f"{sim.base_url}/chat/completions", data=payload,
                                        headers={"Content-Type": "application/json"}) as reply:
                    assert reply.status == 200
                    assert parse_answer(content_of(await reply.text())).answer == "blue"
