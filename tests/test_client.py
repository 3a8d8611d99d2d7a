"""VLMClient against small real aiohttp servers that play exact fault sequences."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from vqa_engine.client import (
    ChatRequest,
    ClientConfig,
    RetryPolicy,
    Timeouts,
    VLMClient,
    image_size_text,
    normalize_model_name,
    parse_reset_duration,
    parse_retry_after,
    rate_limit_wait,
)
from vqa_engine.errors import (
    AuthenticationError,
    BadRequestError,
    EmptyContentError,
    EndpointConnectionError,
    EndpointError,
    EndpointTimeoutError,
    MalformedResponseError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    TruncatedError,
)
from vqa_engine.settings import Endpoint

SECRET = "sk-test-Zq8v1rXcKeyThatMustNeverLeak9f3a"
FAST_RETRY = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)

Step = Callable[[web.Request], Awaitable[web.StreamResponse]]


def completion(text: str = '{"answer": "red", "explanation": "it is red"}',
               finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "served-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def ok(text: str = '{"answer": "red", "explanation": "it is red"}', finish: str = "stop",
       headers: dict[str, str] | None = None) -> Step:
    async def step(request: web.Request) -> web.StreamResponse:
        return web.json_response(completion(text, finish), headers=headers)
    return step


def status(code: int, payload: Any = None, *, text: str | None = None,
           content_type: str = "application/json",
           headers: dict[str, str] | None = None) -> Step:
    async def step(request: web.Request) -> web.StreamResponse:
        body = text if text is not None else json.dumps(payload if payload is not None else {})
        return web.Response(status=code, text=body, content_type=content_type, headers=headers)
    return step


def stall(seconds: float = 5.0) -> Step:
    async def step(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response(completion())
    return step


def dribble(chunks: int, every: float) -> Step:
    """Headers at once, then a byte every `every` seconds: never silent, never finished."""
    async def step(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(chunks):
            await response.write(b" ")
            await asyncio.sleep(every)
        await response.write(json.dumps(completion()).encode())
        await response.write_eof()
        return response
    return step


def reset() -> Step:
    async def step(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return web.Response(status=500)
    return step


@dataclass
class Seen:
    at: float
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Script:
    """Plays `steps` in order, one per request; the last step repeats."""

    steps: list[Step]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(Seen(time.monotonic(), dict(request.headers), json.loads(raw)))
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return await step(request)


StartScript = Callable[..., Awaitable[Script]]


@pytest.fixture
async def serve() -> AsyncIterator[StartScript]:
    runners: list[web.AppRunner] = []

    async def start(*steps: Step) -> Script:
        script = Script(list(steps))
        app = web.Application()
        app.router.add_post("/v1/chat/completions", script.handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        script.url = f"http://127.0.0.1:{port}/v1"
        return script

    yield start
    for runner in runners:
        await runner.cleanup()


def jpeg_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


IMAGE = jpeg_bytes()


def config_for(script: Script, **changes: Any) -> ClientConfig:
    endpoint = changes.pop("endpoint", None) or Endpoint(base_url=script.url, model="test-model")
    base = ClientConfig(endpoint=endpoint, concurrency=4, retry=FAST_RETRY,
                        timeouts=Timeouts(connect=2.0, first_byte=2.0, total=5.0))
    return replace(base, **changes)


async def call(config: ClientConfig, request: ChatRequest | None = None,
               retried: list[EndpointError] | None = None) -> Any:
    async with VLMClient(config, on_retry=retried.append if retried is not None else None) \
            as client:
        return await client.complete(request or ChatRequest("What colour?", IMAGE))


async def failure(config: ClientConfig, retried: list[EndpointError] | None = None
                  ) -> EndpointError:
    with pytest.raises(EndpointError) as caught:
        await call(config, retried=retried)
    return caught.value


# -- the request ------------------------------------------------------------------------

async def test_request_carries_the_jpeg_unchanged_as_a_data_url_with_a_text_part(serve):
    script = await serve(ok())
    endpoint = Endpoint(base_url=script.url, model="/workspace/Qwen3-VL-235B-A22B-Instruct/")
    response = await call(config_for(script, endpoint=endpoint, temperature=0.3, max_tokens=99),
                          ChatRequest("What colour is the car?", IMAGE))
    body = script.seen[0].body
    content = body["messages"][-1]["content"]
    image_part = next(part for part in content if part["type"] == "image_url")
    text_part = next(part for part in content if part["type"] == "text")
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == IMAGE
    assert text_part["text"] == "What colour is the car?"
    assert body["model"] == "qwen3-vl-235b-a22b-instruct"
    assert body["temperature"] == 0.3 and body["max_tokens"] == 99
    assert response.text.startswith('{"answer"') and response.retries == 0
    assert (response.prompt_tokens, response.completion_tokens) == (11, 7)
    assert response.finish_reason == "stop" and response.model == "served-model"


async def test_per_request_parameters_and_system_prompt_override_the_config(serve):
    script = await serve(ok())
    await call(config_for(script), ChatRequest("q", None, temperature=0.0, max_tokens=5,
                                               system="be brief"))
    body = script.seen[0].body
    assert body["temperature"] == 0.0 and body["max_tokens"] == 5
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert [part["type"] for part in body["messages"][1]["content"]] == ["text"]


async def test_model_name_is_sent_verbatim_when_normalization_is_off(serve):
    script = await serve(ok())
    endpoint = Endpoint(base_url=script.url, model="/workspace/Qwen3-VL")
    await call(config_for(script, endpoint=endpoint, normalize_model=False))
    assert script.seen[0].body["model"] == "/workspace/Qwen3-VL"


@pytest.mark.parametrize(("name", "expected"), [
    ("/workspace/Qwen3-VL-235B-A22B-Instruct", "qwen3-vl-235b-a22b-instruct"),
    ("/models/Qwen2.5-VL-7B-Instruct/", "qwen2.5-vl-7b-instruct"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl-7b-instruct"),
    ("gpt-4o", "gpt-4o"),
    ("  LLaVA  ", "llava"),
])
def test_model_names_are_normalized_to_their_lower_case_last_path_part(name, expected):
    assert normalize_model_name(name) == expected


async def test_bearer_header_is_sent_only_when_a_real_key_is_set(serve):
    script = await serve(ok())
    with_key = Endpoint(base_url=script.url, model="m", api_key=SECRET, key_source="the run form")
    await call(config_for(script, endpoint=with_key))
    placeholder = Endpoint(base_url=script.url, model="m", api_key="1")
    await call(config_for(script, endpoint=placeholder))
    assert script.seen[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert "Authorization" not in script.seen[1].headers


# -- retried faults -----------------------------------------------------------------------

async def test_429_with_retry_after_waits_as_told_then_succeeds(serve):
    script = await serve(status(429, {"error": {"message": "slow down"}},
                                headers={"Retry-After": "0.3"}), ok())
    retried: list[EndpointError] = []
    response = await call(config_for(script), retried=retried)
    assert response.retries == 1 and len(script.seen) == 2
    assert [type(error) for error in retried] == [RateLimitedError]
    assert retried[0].retry_after == pytest.approx(0.3)
    assert script.seen[1].at - script.seen[0].at >= 0.28


async def test_server_error_twice_then_success_is_retried_twice(serve):
    script = await serve(status(500, {"error": {"message": "boom"}}),
                         status(500, {"error": {"message": "boom"}}), ok())
    retried: list[EndpointError] = []
    response = await call(config_for(script), retried=retried)
    assert response.retries == 2 and len(script.seen) == 3
    assert all(isinstance(error, ServerError) and error.status == 500 for error in retried)
    assert response.text.startswith('{"answer"')


async def test_stalled_read_beyond_first_byte_timeout_is_a_retried_timeout(serve):
    script = await serve(stall(5.0))
    config = config_for(script, retry=replace(FAST_RETRY, max_retries=1),
                        timeouts=Timeouts(connect=2.0, first_byte=0.2, total=5.0))
    error = await failure(config)
    assert isinstance(error, EndpointTimeoutError) and error.retryable
    assert "first-byte" in str(error) and "gave up after 1 retry" in str(error)
    assert len(script.seen) == 2


async def test_stalled_read_then_success_recovers(serve):
    script = await serve(stall(5.0), ok())
    config = config_for(script, timeouts=Timeouts(connect=2.0, first_byte=0.2, total=5.0))
    response = await call(config)
    assert response.retries == 1


async def test_a_trickling_body_hits_the_total_timeout(serve):
    script = await serve(dribble(chunks=40, every=0.05))
    config = config_for(script, retry=replace(FAST_RETRY, max_retries=0),
                        timeouts=Timeouts(connect=1.0, first_byte=1.0, total=0.4))
    error = await failure(config)
    assert isinstance(error, EndpointTimeoutError) and "total timeout" in str(error)


async def test_connection_reset_is_a_retried_connection_error(serve):
    script = await serve(reset(), ok())
    retried: list[EndpointError] = []
    response = await call(config_for(script), retried=retried)
    assert response.retries == 1
    assert isinstance(retried[0], EndpointConnectionError)


async def test_connection_reset_every_time_ends_in_a_connection_error(serve):
    script = await serve(reset())
    error = await failure(config_for(script, retry=replace(FAST_RETRY, max_retries=2)))
    assert isinstance(error, EndpointConnectionError)
    assert len(script.seen) == 3


async def test_refused_connection_is_reported_as_refused():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = Endpoint(base_url=f"http://127.0.0.1:{port}/v1", model="m")
    config = ClientConfig(endpoint=endpoint, retry=RetryPolicy(max_retries=0))
    with pytest.raises(EndpointConnectionError) as caught:
        await call(config)
    assert "refused" in str(caught.value)


async def test_html_502_page_is_a_server_error_without_the_html(serve):
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    script = await serve(status(502, text=page, content_type="text/html"), ok())
    retried: list[EndpointError] = []
    response = await call(config_for(script), retried=retried)
    assert response.retries == 1
    error = retried[0]
    assert isinstance(error, ServerError) and error.status == 502
    assert "HTML error page" in str(error) and "<html>" not in str(error)


async def test_non_json_200_is_malformed(serve):
    script = await serve(status(200, text="Service is up!", content_type="text/plain"))
    error = await failure(config_for(script, retry=replace(FAST_RETRY, max_retries=0)))
    assert isinstance(error, MalformedResponseError) and "non-JSON" in str(error)


async def test_html_200_is_malformed(serve):
    script = await serve(status(200, text="<!DOCTYPE html><html>login</html>",
                                content_type="text/html"))
    error = await failure(config_for(script, retry=replace(FAST_RETRY, max_retries=0)))
    assert isinstance(error, MalformedResponseError) and "HTML page" in str(error)


async def test_cut_short_json_is_malformed_and_retried(serve):
    full = json.dumps(completion())
    script = await serve(status(200, text=full[: len(full) // 2]), ok())
    retried: list[EndpointError] = []
    response = await call(config_for(script), retried=retried)
    assert response.retries == 1
    assert isinstance(retried[0], MalformedResponseError)
    assert "cut-short JSON" in str(retried[0])


async def test_json_without_choices_is_malformed(serve):
    script = await serve(status(200, {"object": "list", "data": []}))
    error = await failure(config_for(script, retry=replace(FAST_RETRY, max_retries=0)))
    assert isinstance(error, MalformedResponseError) and "without choices" in str(error)


async def test_empty_content_is_retried_then_reported(serve):
    script = await serve(ok(text="   "))
    retried: list[EndpointError] = []
    error = await failure(config_for(script, retry=replace(FAST_RETRY, max_retries=2)), retried)
    assert isinstance(error, EmptyContentError)
    assert len(script.seen) == 3 and len(retried) == 2


async def test_finish_reason_length_is_truncated_and_not_retried(serve):
    script = await serve(ok(text='{"answer": "a very long', finish="length"))
    error = await failure(config_for(script, max_tokens=64))
    assert isinstance(error, TruncatedError) and not error.retryable
    assert "max_tokens=64" in str(error)
    assert len(script.seen) == 1


async def test_content_given_as_parts_is_joined(serve):
    async def parts(request: web.Request) -> web.StreamResponse:
        body = completion()
        body["choices"][0]["message"]["content"] = [{"type": "text", "text": "Answer: "},
                                                   {"type": "text", "text": "red"}]
        return web.json_response(body)
    script = await serve(parts)
    response = await call(config_for(script))
    assert response.text == "Answer: red"


# -- permanent faults ---------------------------------------------------------------------

async def test_400_with_a_json_error_is_not_retried_and_quotes_the_server(serve):
    script = await serve(status(400, {"error": {"message": "image_url is not supported",
                                                "type": "invalid_request_error"}}))
    retried: list[EndpointError] = []
    error = await failure(config_for(script), retried)
    assert isinstance(error, BadRequestError) and error.status == 400
    assert "image_url is not supported" in str(error)
    assert len(script.seen) == 1 and retried == []


@pytest.mark.parametrize(("code", "kind"), [
    (404, NotFoundError), (413, PayloadTooLargeError), (422, BadRequestError),
    (403, AuthenticationError),
])
async def test_permanent_statuses_are_never_retried(serve, code, kind):
    script = await serve(status(code, {"detail": "nope"}), ok())
    error = await failure(config_for(script))
    assert type(error) is kind and error.status == code and not error.retryable
    assert len(script.seen) == 1


async def test_401_names_the_key_source_and_shows_the_key_only_masked(serve):
    script = await serve(status(401, {"error": {"message": f"Incorrect API key {SECRET}"}}))
    endpoint = Endpoint(base_url=script.url, model="m", api_key=SECRET,
                        key_source="environment variable VQA_API_KEY")
    error = await failure(config_for(script, endpoint=endpoint))
    message = str(error)
    assert isinstance(error, AuthenticationError) and len(script.seen) == 1
    assert "environment variable VQA_API_KEY" in message
    assert "sk-...9f3a" in message
    assert SECRET not in message and SECRET[8:-4] not in message
    assert "secrets.toml" in message and "run form" in message
    assert SECRET not in repr(error.args)


async def test_401_without_a_key_says_no_key_was_sent_and_how_to_set_one(serve):
    script = await serve(status(401, {"error": {"message": "missing key"}}))
    endpoint = Endpoint(base_url=script.url, model="m", api_key=None, key_source="none")
    error = await failure(config_for(script, endpoint=endpoint))
    assert isinstance(error, AuthenticationError)
    assert "no API key" in str(error) and "VQA_API_KEY" in str(error)


async def test_every_message_names_url_model_and_image_size(serve):
    script = await serve(status(404, {"error": {"message": "no such model"}}))
    endpoint = Endpoint(base_url=script.url, model="/srv/My-Model", api_key=SECRET,
                        key_source="the run form")
    noisy = io.BytesIO()
    Image.effect_noise((256, 256), 80).convert("RGB").save(noisy, "JPEG", quality=95)
    image = noisy.getvalue()
    with pytest.raises(NotFoundError) as caught:
        await call(config_for(script, endpoint=endpoint), ChatRequest("q", image))
    message = str(caught.value)
    assert f"{script.url}/chat/completions" in message
    assert "my-model" in message and "normalization" in message
    assert f"image {len(image) / 1024:.1f} KB" in message
    assert SECRET not in message


async def test_errors_carry_no_http_layer_exception(serve):
    script = await serve(reset())
    endpoint = Endpoint(base_url=script.url, model="m", api_key=SECRET, key_source="x")
    error = await failure(config_for(script, endpoint=endpoint,
                                     retry=replace(FAST_RETRY, max_retries=0)))
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    assert SECRET not in str(error) and "Authorization" not in str(error)


# -- adaptive concurrency and rate-limit headers ------------------------------------------

async def test_a_burst_of_429s_halves_the_limit_once_and_successes_restore_it(serve):
    script = await serve(*[status(429, {"error": {"message": "rate"}})] * 8, ok())
    limits: list[int] = []
    config = config_for(script, concurrency=8)
    async with VLMClient(config) as client:
        def record(error: EndpointError) -> None:
            limits.append(client.limiter.limit)
        client._on_retry = record
        await asyncio.gather(*(client.complete(ChatRequest(f"q{i}", IMAGE)) for i in range(8)))
        assert min(limits) == 4  # eight simultaneous 429s are one congestion signal
        for i in range(4 * client.limiter.recover_after):
            await client.complete(ChatRequest(f"more {i}", IMAGE))
        assert client.limiter.limit == 8


async def test_consecutive_429s_lower_the_limit_down_to_one_and_no_further(serve):
    script = await serve(status(429, {"error": {"message": "rate"}}))
    config = config_for(script, concurrency=8, retry=replace(FAST_RETRY, max_retries=5))
    async with VLMClient(config) as client:
        with pytest.raises(RateLimitedError) as caught:
            await client.complete(ChatRequest("q", IMAGE))
        assert client.limiter.limit == 1
    assert "gave up after 5 retries" in str(caught.value)


async def test_exhausted_rate_limit_headers_hold_the_next_request(serve):
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms",
               "x-ratelimit-remaining-tokens": "5000"}
    script = await serve(ok(headers=headers), ok())
    async with VLMClient(config_for(script)) as client:
        await client.complete(ChatRequest("first", IMAGE))
        assert client.limiter.held_for > 0.2
        await client.complete(ChatRequest("second", IMAGE))
    assert script.seen[1].at - script.seen[0].at >= 0.28


async def test_cancelled_requests_give_their_slots_back(serve):
    script = await serve(stall(5.0))
    async with VLMClient(config_for(script, concurrency=2)) as client:
        tasks = [asyncio.create_task(client.complete(ChatRequest(f"q{i}", IMAGE)))
                 for i in range(5)]
        await asyncio.sleep(0.2)
        assert client.limiter.in_flight == 2
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert client.limiter.in_flight == 0


# -- lifecycle ----------------------------------------------------------------------------

async def test_close_is_idempotent_and_a_closed_client_refuses_work(serve):
    script = await serve(ok())
    client = VLMClient(config_for(script))
    await client.complete(ChatRequest("q", IMAGE))
    await client.close()
    await client.close()
    assert client.closed
    with pytest.raises(RuntimeError):
        await client.complete(ChatRequest("q", IMAGE))


async def test_check_connection_sends_one_short_text_only_request(serve):
    script = await serve(ok(text="OK", finish="length"))
    async with VLMClient(config_for(script)) as client:
        response = await client.check_connection()
    assert response.text == "OK" and len(script.seen) == 1
    content = script.seen[0].body["messages"][-1]["content"]
    assert [part["type"] for part in content] == ["text"]
    assert script.seen[0].body["max_tokens"] <= 32


async def test_check_connection_reports_a_bad_key_without_retrying(serve):
    script = await serve(status(401, {"error": {"message": "bad key"}}), ok())
    async with VLMClient(config_for(script)) as client:
        with pytest.raises(AuthenticationError):
            await client.check_connection()
    assert len(script.seen) == 1


# -- header parsing and backoff -----------------------------------------------------------

def test_retry_after_accepts_seconds_and_http_dates():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(later, now=now) == pytest.approx(7.0)
    assert parse_retry_after(format_datetime(now - timedelta(seconds=9), usegmt=True),
                             now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("2.5", 2.5),
    ("", None), ("fast", None), ("5x", None),
])
def test_reset_durations_are_parsed(text, seconds):
    assert parse_reset_duration(text) == (pytest.approx(seconds) if seconds else None)


def test_rate_limit_wait_only_when_a_budget_is_exhausted():
    assert rate_limit_wait({"x-ratelimit-remaining-requests": "3",
                            "x-ratelimit-reset-requests": "1s"}) is None
    assert rate_limit_wait({"x-ratelimit-remaining-requests": "0",
                            "x-ratelimit-reset-requests": "1s",
                            "x-ratelimit-remaining-tokens": "0",
                            "x-ratelimit-reset-tokens": "6m0s"}) == 360.0


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    rng = random.Random(7)
    for retry in range(1, 8):
        ceiling = min(4.0, 0.5 * 2 ** (retry - 1))
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2


def test_retry_after_wins_over_backoff_but_is_capped():
    policy = RetryPolicy(base_delay=0.01, max_delay=0.02, retry_after_cap=5.0)
    told = RateLimitedError("rate", status=429, retry_after=2.0)
    greedy = RateLimitedError("rate", status=429, retry_after=3600.0)
    assert policy.delay(told, 1) == 2.0
    assert policy.delay(greedy, 1) == 5.0


@pytest.mark.parametrize(("image", "text"), [
    (None, "no image"), (b"x" * 500, "image 500 bytes"), (b"x" * 2048, "image 2.0 KB"),
    (b"x" * (3 * 1024 * 1024), "image 3.00 MB"),
])
def test_image_sizes_are_shown_in_readable_units(image, text):
    assert image_size_text(image) == text


def test_encoded_request_is_exactly_the_json_body():
    client = VLMClient(ClientConfig(endpoint=Endpoint(base_url="http://127.0.0.1:9/v1")))
    for request in (ChatRequest('say "hi" \\ 中文 \x00', IMAGE, system="sys"),
                    ChatRequest("no image", None)):
        assert json.loads(client.encode_request(request)) == client.request_body(request)


async def test_credentials_in_the_base_url_are_not_shown(serve):
    script = await serve(status(404, {"error": {"message": "no"}}))
    with_password = script.url.replace("http://", "http://curator:hunter2secret@")
    error = await failure(config_for(script, endpoint=Endpoint(base_url=with_password,
                                                               model="m")))
    assert "hunter2secret" not in str(error) and "http://***@127.0.0.1" in str(error)
