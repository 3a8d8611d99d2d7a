"""A SIMULATED OpenAI-compatible vision endpoint, for tests, benchmarks and the offline demo.

No model runs here. The simulator decodes the image it receives (just enough to find its
size and dominant colour), answers answer prompts and distractor prompts in the layouts the
prompts ask for, answers check prompts (`vqa_engine.model_checks`) with the letter of the
option it would itself have given (`check_strategy` "look"; without an image it has nothing
to go on and takes the first option) or always the first letter ("first": a model with a
position bias, which circular checks catch), reports usage, and injects faults at the rates asked for: 4xx/5xx statuses,
rate limits, connection resets, stalls, garbage or cut-short bodies, empty content,
`finish_reason=length`, HTML pages. It is fast enough to drive hundreds of concurrent
requests (images are decoded at a reduced JPEG draft scale, never in full).

`app["stats"]` counts requests by role and outcome and keeps a Counter of request-body
hashes, so a test can prove that no request was sent twice. Everything that offers it to a
curator labels it as simulated.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import random
import socket
import struct
import threading
import time
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from aiohttp import web
from PIL import Image, UnidentifiedImageError

from vqa_engine.prompts import is_chinese, prompt_role, read_check_prompt, read_distractor_prompt

FAULT_NAMES = ("400", "401", "403", "404", "413", "429", "500", "502", "503",
               "reset", "stall", "garbage", "empty", "length", "html")
SIMULATED_MODEL = "simulated-vlm"
CHECK_STRATEGIES = ("look", "first")


@dataclass(frozen=True)
class ForcedFault:
    """What a `responder` returns instead of text to make one request fail in a given way."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in FAULT_NAMES:
            raise ValueError(f"unknown simulator fault {self.name!r}; known: {FAULT_NAMES}")


Responder = Callable[[str, str], "str | ForcedFault"]
"""(role, prompt) -> the model's text, or a ForcedFault. Role: answer | distractors | check |
other. Crafted check replies can read the options shown with `prompts.read_check_prompt`."""


@dataclass(frozen=True)
class SimulatorConfig:
    latency_ms: float = 100.0
    jitter_ms: float = 0.0  # latency is uniform in latency_ms +- jitter_ms, never below 0
    faults: Mapping[str, float] = field(default_factory=dict)  # fault name -> probability
    seed: int | None = None
    stall_seconds: float = 30.0
    model: str = SIMULATED_MODEL
    responder: Responder | None = None
    api_key: str | None = None  # when set, requests without this bearer key get 401
    retry_after: float | None = None  # Retry-After seconds sent with a 429
    strict_model: bool = False  # 404 for a model name other than `model`
    check_strategy: str = "look"  # how check prompts are answered: one of CHECK_STRATEGIES

    def __post_init__(self) -> None:
        if self.check_strategy not in CHECK_STRATEGIES:
            raise ValueError(f"unknown check strategy {self.check_strategy!r}; "
                             f"known: {CHECK_STRATEGIES}")
        unknown = sorted(set(self.faults) - set(FAULT_NAMES))
        if unknown:
            raise ValueError(f"unknown simulator fault(s) {unknown}; known: {list(FAULT_NAMES)}")
        total = sum(self.faults.values())
        if any(rate < 0 for rate in self.faults.values()) or total > 1.0 + 1e-9:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1, got {total:g}")


def parse_faults(text: str) -> dict[str, float]:
    """`429=0.1,500=0.05,reset=0.01` -> {"429": 0.1, "500": 0.05, "reset": 0.01}."""
    faults: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, rate = part.partition("=")
        name = name.strip()
        if not sep or name not in FAULT_NAMES:
            raise ValueError(f"bad fault {part!r}: use NAME=RATE with NAME one of "
                             f"{', '.join(FAULT_NAMES)}")
        try:
            faults[name] = float(rate)
        except ValueError:
            raise ValueError(f"bad fault rate in {part!r}: {rate!r} is not a number") from None
    SimulatorConfig(faults=faults)  # validates the rates
    return faults


@dataclass
class SimulatorStats:
    """Counters kept by the server's loop; read them from other threads once requests settle."""

    requests: int = 0
    by_role: Counter[str] = field(default_factory=Counter)
    with_image: Counter[str] = field(default_factory=Counter)  # by role, requests with an image
    by_outcome: Counter[str] = field(default_factory=Counter)
    bodies: Counter[str] = field(default_factory=Counter)  # request body digest -> count
    in_flight: int = 0
    peak_in_flight: int = 0

    def repeated(self) -> dict[str, int]:
        """Request bodies received more than once (hash -> count)."""
        return {digest: count for digest, count in dict(self.bodies).items() if count > 1}

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_role": dict(self.by_role),
            "with_image": dict(self.with_image),
            "by_outcome": dict(self.by_outcome),
            "distinct_bodies": len(self.bodies),
            "repeated_bodies": len(self.repeated()),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
        }

    def reset(self) -> None:
        self.requests = 0
        self.by_role.clear()
        self.with_image.clear()
        self.by_outcome.clear()
        self.bodies.clear()
        self.peak_in_flight = self.in_flight


@dataclass
class SimulatorState:
    """Mutable per-app state, so a running server can be reconfigured between test steps."""

    config: SimulatorConfig
    stats: SimulatorStats
    rng: random.Random
    counter: int = 0
    images: ImageReader = field(default_factory=lambda: ImageReader())


STATE_KEY = web.AppKey("simulator_state", SimulatorState)

# -- what the "model" sees ---------------------------------------------------------------

PALETTE: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("red", "红色", (200, 40, 40)),
    ("orange", "橙色", (240, 140, 30)),
    ("yellow", "黄色", (235, 220, 50)),
    ("green", "绿色", (50, 160, 60)),
    ("cyan", "青色", (60, 200, 210)),
    ("blue", "蓝色", (40, 70, 200)),
    ("purple", "紫色", (130, 60, 170)),
    ("pink", "粉色", (240, 150, 190)),
    ("brown", "棕色", (120, 80, 40)),
    ("black", "黑色", (20, 20, 20)),
    ("gray", "灰色", (128, 128, 128)),
    ("white", "白色", (240, 240, 240)),
)
COUNT_WORDS = ("how many", "number of", "count", "多少", "几")


@dataclass(frozen=True)
class SeenImage:
    width: int
    height: int
    colour_en: str
    colour_zh: str


class BadImage(Exception):
    pass


def look_at(data: bytes) -> SeenImage:
    """Size and dominant colour, from a reduced draft decode (cheap even for big JPEGs)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.draft("RGB", (32, 32))
            pixel = image.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            SyntaxError) as exc:
        raise BadImage(type(exc).__name__) from None
    assert isinstance(pixel, tuple)
    r, g, b = (int(v) for v in pixel[:3])
    name_en, name_zh, _ = min(
        PALETTE, key=lambda entry: sum((a - c) ** 2 for a, c in zip(entry[2], (r, g, b))))
    return SeenImage(width, height, name_en, name_zh)


def peek_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header alone (`data` may be just the file's beginning)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            SyntaxError) as exc:
        raise BadImage(type(exc).__name__) from None


class ImageReader:
    """What the simulated model sees of an image, at the least cost.

    Answer calls need the colour: the image is decoded at draft scale once and remembered
    (a multiple-choice item sends the same image twice, benchmarks reuse images). Other
    calls only need the size, read from the first bytes of the data URL.
    """

    header_chars = (8 * 1024, 96 * 1024)  # base64 prefixes tried to find the header
    remembered = 1024

    def __init__(self) -> None:
        self._looks: OrderedDict[tuple[int, int], SeenImage] = OrderedDict()

    def look(self, url: bytes) -> SeenImage:
        key = (len(url), hash(url))
        seen = self._looks.get(key)
        if seen is None:
            seen = look_at(_decode_base64(_base64_part(url)))
            self._looks[key] = seen
            if len(self._looks) > self.remembered:
                self._looks.popitem(last=False)
        else:
            self._looks.move_to_end(key)
        return seen

    def peek(self, url: bytes) -> SeenImage:
        data = _base64_part(url)
        for chars in self.header_chars:
            if len(data) <= chars:
                break
            try:
                width, height = peek_size(base64.b64decode(data[:chars]))
                return SeenImage(width, height, "", "")
            except (BadImage, binascii.Error, ValueError):
                continue  # a header larger than the prefix (big EXIF / ICC)
        width, height = peek_size(_decode_base64(data))
        return SeenImage(width, height, "", "")


def _question_of(prompt: str) -> str:
    for line in prompt.splitlines():
        for label in ("Question:", "问题："):
            if line.startswith(label):
                return line[len(label):].strip()
    return prompt


def _is_counting(question: str) -> bool:
    lowered = question.lower()
    return any(word in lowered for word in COUNT_WORDS)


def _answer_text(prompt: str, seen: SeenImage | None) -> str:
    question = _question_of(prompt)
    chinese = is_chinese(question)
    if seen is None:
        answer = "不知道" if chinese else "unknown"
        explanation = "没有收到图片。" if chinese else "No image was received."
    elif _is_counting(question):
        answer = str((seen.width + seen.height) % 9 + 1)
        explanation = (f"图中可以数出 {answer} 个。" if chinese
                       else f"There are {answer} of them visible in the image.")
    else:
        answer = seen.colour_zh if chinese else seen.colour_en
        explanation = (f"这张 {seen.width}x{seen.height} 的图片以{answer}为主。" if chinese else
                       f"The {seen.width}x{seen.height} image is mostly {answer}.")
    return json.dumps({"answer": answer, "explanation": explanation}, ensure_ascii=False)


def _distractors_text(prompt: str, rng: random.Random) -> str:
    ask = read_distractor_prompt(prompt)
    count = ask.count or 3
    correct = (ask.correct_answer or "").strip().lower()
    chinese = is_chinese(_question_of(prompt))
    if correct.isdigit():
        pool = [str(n) for n in range(0, 13) if str(n) != correct]
    else:
        names = [zh if chinese else en for en, zh, _ in PALETTE]
        pool = [name for name in names
                if not correct or (name.lower() not in correct and correct not in name.lower())]
    options = rng.sample(pool, min(count, len(pool)))
    while len(options) < count:
        options.append(f"{'选项' if chinese else 'option'} {len(options) + 1}")
    return json.dumps({"options": options}, ensure_ascii=False)


def _check_text(prompt: str, seen: SeenImage | None, strategy: str) -> str:
    """The letter of the option the simulated model would pick, as `{"choice": ...}`."""
    ask = read_check_prompt(prompt)
    letters = list(ask.options) or ["A"]
    choice = letters[0]
    if strategy == "look" and seen is not None:
        own = json.loads(_answer_text(f"Question: {ask.question}", seen))["answer"]
        matching = [letter for letter, text in ask.options.items()
                    if text.strip().casefold() == str(own).casefold()]
        if matching:
            choice = matching[0]
    return json.dumps({"choice": choice})


def _request_parts(body: Any) -> tuple[str, Any]:
    """(text of the last user message, image data URL or None)."""
    text_parts: list[str] = []
    image_url: Any = None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        text_parts, image_url = [], None
        content = message.get("content")
        if isinstance(content, str):
            text_parts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    text_parts.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    url = part.get("image_url")
                    image_url = url.get("url") if isinstance(url, dict) else url
    return "\n".join(text_parts), image_url


def _base64_part(url: bytes) -> bytes:
    head, sep, data = url.partition(b",")
    if not sep or not head.startswith(b"data:") or b";base64" not in head:
        raise BadImage("not a base64 data URL")
    return data


def _decode_base64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage("invalid base64") from None


_LIFTED = "lifted-image"


def _lift_image(raw: bytes) -> tuple[bytes, bytes | None]:
    """Cut the first image data URL out of a request body before JSON parsing.

    The base64 string is most of the body; `json.loads` would scan and copy it for nothing.
    Bodies where the URL is not a plain JSON string (escapes) are left whole.
    """
    start = raw.find(b'"data:image/')
    if start < 0 or (start > 0 and raw[start - 1] == 0x5C):  # 0x5C: backslash
        return raw, None
    end = raw.find(b'"', start + 1)
    if end < 0:
        return raw, None
    url = raw[start + 1:end]
    if b"\\" in url:
        return raw, None
    return b"".join((raw[:start], b'"', _LIFTED.encode(), raw[end:])), url


# -- HTTP --------------------------------------------------------------------------------

def _error(status: int, message: str, kind: str, headers: Mapping[str, str] | None = None
           ) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                             status=status, headers=headers)


HTML_PAGE = ("<!DOCTYPE html><html><head><title>{status} {title}</title></head><body>"
             "<center><h1>{status} {title}</h1></center><hr><center>nginx</center>"
             "</body></html>")


def _completion(state: SimulatorState, model: str, content: str, finish: str,
                prompt_tokens: int) -> dict[str, Any]:
    state.counter += 1
    completion_tokens = max(1, len(content) // 4) if content else 0
    return {
        "id": f"chatcmpl-sim-{state.counter}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def _reset_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    config, stats = state.config, state.stats
    stats.requests += 1
    stats.in_flight += 1
    stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
    try:
        return await _answer_request(request, state, config, stats)
    finally:
        stats.in_flight -= 1


async def _answer_request(request: web.Request, state: SimulatorState,
                          config: SimulatorConfig, stats: SimulatorStats) -> web.StreamResponse:
    raw = await request.read()
    light, lifted = _lift_image(raw)
    digest = hashlib.sha256(light)
    if lifted is not None:  # the image by its in-process hash: a full sha256 costs too much
        digest.update(hash(lifted).to_bytes(8, "little", signed=True))
    stats.bodies[digest.hexdigest()] += 1

    if config.api_key is not None:
        if request.headers.get("Authorization", "") != f"Bearer {config.api_key}":
            stats.by_outcome["401"] += 1
            return _error(401, "Incorrect API key provided (simulated).", "invalid_api_key")
    try:
        body = json.loads(light)
        prompt, found_url = _request_parts(body)
    except (ValueError, AttributeError) as exc:
        stats.by_outcome["bad_request"] += 1
        return _error(400, f"invalid request body: {exc}", "invalid_request_error")
    role = prompt_role(prompt) or "other"
    stats.by_role[role] += 1
    model = str(body.get("model") or config.model)
    if config.strict_model and model != config.model:
        stats.by_outcome["404"] += 1
        return _error(404, f"The model `{model}` does not exist.", "not_found_error")

    image_url: bytes | None = None
    if found_url == _LIFTED and lifted is not None:
        image_url = lifted
    elif isinstance(found_url, str) and found_url:
        image_url = found_url.encode("utf-8", "replace")
    seen: SeenImage | None = None
    if image_url:
        stats.with_image[role] += 1
        try:
            seen = (state.images.look(image_url) if role in ("answer", "check")
                    else state.images.peek(image_url))
        except BadImage as exc:
            stats.by_outcome["bad_image"] += 1
            return _error(400, f"could not read the image ({exc})", "invalid_request_error")

    delay = config.latency_ms
    if config.jitter_ms:
        delay += state.rng.uniform(-config.jitter_ms, config.jitter_ms)
    if delay > 0:
        await asyncio.sleep(delay / 1000.0)

    fault: str | None = None
    draw = state.rng.random()
    for name, rate in config.faults.items():
        if draw < rate:
            fault = name
            break
        draw -= rate

    content: str | None = None
    if fault is None:
        if config.responder is not None:
            scripted = config.responder(role, prompt)
            if isinstance(scripted, ForcedFault):
                fault = scripted.name
            else:
                content = scripted
        elif role == "answer":
            content = _answer_text(prompt, seen)
        elif role == "distractors":
            content = _distractors_text(prompt, state.rng)
        elif role == "check":
            content = _check_text(prompt, seen, config.check_strategy)
        else:
            content = "OK (simulated endpoint)"

    outcome = fault or "ok"
    stats.by_outcome[outcome] += 1
    prompt_tokens = len(prompt) // 4 + (
        min(1280, seen.width * seen.height // (28 * 28)) if seen else 0)

    if fault is None:
        assert content is not None
        return web.json_response(_completion(state, model, content, "stop", prompt_tokens))
    return await _fault_response(request, state, config, fault, role, prompt, seen, model,
                                 prompt_tokens)


async def _fault_response(request: web.Request, state: SimulatorState, config: SimulatorConfig,
                          fault: str, role: str, prompt: str, seen: SeenImage | None,
                          model: str, prompt_tokens: int) -> web.StreamResponse:
    if fault == "429":
        headers = {"Retry-After": f"{config.retry_after:g}"} if config.retry_after else None
        return _error(429, "Rate limit reached (simulated).", "rate_limit_error", headers)
    if fault in ("400", "401", "403", "404", "413", "500", "503"):
        messages = {"400": "Bad request (simulated).", "401": "Invalid API key (simulated).",
                    "403": "Forbidden (simulated).", "404": "Not found (simulated).",
                    "413": "Request entity too large (simulated).",
                    "500": "Internal server error (simulated).",
                    "503": "Service temporarily overloaded (simulated)."}
        return _error(int(fault), messages[fault], "simulated_error")
    if fault in ("502", "html"):
        status, title = (502, "Bad Gateway") if fault == "502" else (200, "Welcome")
        return web.Response(status=status, content_type="text/html",
                            text=HTML_PAGE.format(status=status, title=title))
    if fault == "reset":
        _reset_connection(request)
        return web.Response(status=500)
    normal = (_answer_text(prompt, seen) if role == "answer"
              else _distractors_text(prompt, state.rng) if role == "distractors"
              else _check_text(prompt, seen, config.check_strategy) if role == "check" else "OK")
    if fault == "stall":
        await asyncio.sleep(config.stall_seconds)
        return web.json_response(_completion(state, model, normal, "stop", prompt_tokens))
    if fault == "empty":
        return web.json_response(_completion(state, model, "", "stop", prompt_tokens))
    if fault == "length":
        return web.json_response(_completion(state, model, normal[: max(1, len(normal) // 2)],
                                             "length", prompt_tokens))
    # garbage: either a body that is not JSON at all or valid JSON cut short
    if state.rng.random() < 0.5:
        return web.Response(status=200, content_type="application/json",
                            text="upstream said: \x00\x01 not json at all")
    full = json.dumps(_completion(state, model, normal, "stop", prompt_tokens))
    return web.Response(status=200, content_type="application/json",
                        text=full[: len(full) // 2])


async def _models(request: web.Request) -> web.Response:
    config = request.app[STATE_KEY].config
    return web.json_response({"object": "list", "data": [
        {"id": config.model, "object": "model", "owned_by": "vqa-curator-simulator"}]})


def build_app(config: SimulatorConfig | None = None) -> web.Application:
    config = config or SimulatorConfig()
    state = SimulatorState(config=config, stats=SimulatorStats(), rng=random.Random(config.seed))
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app["stats"] = state.stats
        app["config"] = config
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    return app


def _make_runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)


@dataclass
class RunningSimulator:
    """A simulator serving in the current event loop (from `start_simulator`)."""

    app: web.Application
    runner: web.AppRunner
    port: int
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def stats(self) -> SimulatorStats:
        return self.app[STATE_KEY].stats

    def reconfigure(self, **changes: Any) -> SimulatorConfig:
        state = self.app[STATE_KEY]
        state.config = replace(state.config, **changes)
        return state.config

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> RunningSimulator:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


async def start_simulator(config: SimulatorConfig | None = None, port: int = 0, *,
                          host: str = "127.0.0.1") -> RunningSimulator:
    """Serve the simulator in the running loop; `await sim.stop()` (or `async with`) ends it."""
    app = build_app(config)
    runner = _make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = int(address[1])
            break
    return RunningSimulator(app=app, runner=runner, port=bound, host=host)


class SimulatorServer:
    """The simulator in a background thread with its own loop, for synchronous callers."""

    def __init__(self, config: SimulatorConfig | None = None, *, port: int = 0,
                 host: str = "127.0.0.1") -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.requested_port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: RunningSimulator | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._lock = threading.Lock()

    def start(self) -> SimulatorServer:
        with self._lock:
            if self._thread is not None:
                return self
            self._thread = threading.Thread(target=self._serve, name="vqa-simulator",
                                            daemon=True)
            self._thread.start()
        self._ready.wait(timeout=30)
        if self._failure is not None:
            raise RuntimeError(f"the simulator could not start on {self.host}:"
                               f"{self.requested_port}: {self._failure}") from None
        if self._running is None:
            raise RuntimeError("the simulator did not start within 30 s")
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._running = loop.run_until_complete(
                start_simulator(self.config, self.requested_port, host=self.host))
        except BaseException as exc:  # reported to the starting thread
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._running.stop())
            loop.close()

    @property
    def port(self) -> int:
        if self._running is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._running.port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def app(self) -> web.Application:
        if self._running is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._running.app

    @property
    def stats(self) -> SimulatorStats:
        return self.app[STATE_KEY].stats

    def reconfigure(self, **changes: Any) -> SimulatorConfig:
        """Change latency, faults, responder ... of the running server (between test steps)."""
        if self._running is None:
            self.config = replace(self.config, **changes)
            return self.config
        self.config = self._running.reconfigure(**changes)
        return self.config

    def stop(self) -> None:
        with self._lock:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None or not thread.is_alive():
                return
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
