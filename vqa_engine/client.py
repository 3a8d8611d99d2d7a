"""The model endpoint client: OpenAI-compatible chat completions with an image, on aiohttp.

Why it is more than `session.post`:
- aiohttp's defaults let a stalled read hang for minutes, so every request has explicit
  connect / first-byte (socket read) / total timeouts.
- Endpoints fail in many ways (rate limits, proxies answering with HTML, bodies cut short,
  models answering nothing). Each is turned into one typed `EndpointError` whose message
  names the URL, the model and the image size, so a curator can act on it.
- Transient failures (429, 5xx, timeouts, dropped connections, malformed bodies) are retried
  with exponential backoff and full jitter, honouring `Retry-After` and the
  `x-ratelimit-*` headers; permanent ones (400, 401, 403, 404, 413, 422) never are.
- Concurrency adapts (`AdaptiveLimiter`): halved on 429s, recovered gradually.
- The API key only ever travels in the `Authorization` header. aiohttp exception reprs carry
  that header, so no message here is built from one: only status codes and class names.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import errno
import json
import random
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

import aiohttp

from vqa_engine.concurrency import AdaptiveLimiter
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

_IMAGE_SLOT = f"image-slot-{secrets.token_hex(16)}"  # replaced by the base64 image
SERVER_TEXT_SHOWN = 300  # characters of an endpoint's own error text quoted in a message


@dataclass(frozen=True)
class Timeouts:
    """Seconds. `first_byte` is aiohttp's `sock_read`: the longest silence while reading."""

    connect: float = 10.0
    first_byte: float = 120.0
    total: float = 300.0

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.total, sock_connect=self.connect,
                                     sock_read=self.first_byte)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a server's `Retry-After` wins, up to a cap."""

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    retry_after_cap: float = 60.0

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Delay before retry number `retry` (1-based): uniform in [0, base * 2**(retry-1)]."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, retry - 1)))
        return (rng or random).uniform(0.0, ceiling)

    def delay(self, error: EndpointError, retry: int, rng: random.Random | None = None) -> float:
        wait = self.backoff(retry, rng)
        if error.retry_after is not None:
            wait = max(wait, min(error.retry_after, self.retry_after_cap))
        return wait


@dataclass(frozen=True)
class ClientConfig:
    endpoint: Endpoint
    concurrency: int = 8
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    normalize_model: bool = True
    temperature: float = 0.7
    max_tokens: int = 1024


@dataclass(frozen=True)
class ChatRequest:
    """One call. `image_jpeg` is the model-ready JPEG prepared at ingest, sent as is."""

    prompt: str
    image_jpeg: bytes | None
    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None


@dataclass(frozen=True)
class ChatResponse:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model: str
    retries: int = 0


def normalize_model_name(name: str) -> str:
    """`/workspace/Qwen3-VL-235B-A22B-Instruct/` -> `qwen3-vl-235b-a22b-instruct`."""
    stripped = name.strip().rstrip("/")
    return stripped.rsplit("/", 1)[-1].lower() if stripped else stripped


def url_without_credentials(url: str) -> str:
    """`http://user:secret@host/v1` -> `http://***@host/v1`, for messages."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def image_size_text(image: bytes | None) -> str:
    if image is None:
        return "no image"
    size = len(image)
    if size < 1024:
        return f"image {size} bytes"
    if size < 1024 * 1024:
        return f"image {size / 1024:.1f} KB"
    return f"image {size / (1024 * 1024):.2f} MB"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds: either a number or an HTTP date. None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset_duration(value: str | None) -> float | None:
    """`x-ratelimit-reset-*` values: `1s`, `6m0s`, `20ms`, `1h2m3.5s` or plain seconds."""
    if value is None:
        return None
    text = value.strip().lower()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        amount, unit = float(match.group(1)), match.group(2)
        total += amount * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        position = match.end()
    if position != len(text) or position == 0:
        return None
    return total


def rate_limit_wait(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait when `x-ratelimit-remaining-requests/-tokens` says nothing is left."""
    waits: list[float] = []
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is None:
            continue
        try:
            left = float(remaining.strip())
        except ValueError:
            continue
        if left <= 0:
            reset = parse_reset_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if reset is not None:
                waits.append(reset)
    return max(waits) if waits else None


class VLMClient:
    """Chat completions against one endpoint. One `ClientSession`; use `async with`."""

    def __init__(self, config: ClientConfig, *,
                 on_retry: Callable[[EndpointError], None] | None = None) -> None:
        self.config = config
        self.endpoint = config.endpoint
        self.url = config.endpoint.base_url.rstrip("/") + "/chat/completions"
        self.shown_url = url_without_credentials(self.url)
        self.model = (normalize_model_name(config.endpoint.model) if config.normalize_model
                      else config.endpoint.model)
        self.limiter = AdaptiveLimiter(config.concurrency)
        self._on_retry = on_retry
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._rng = random.Random()

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> VLMClient:
        self._ensure_session()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("VLMClient is closed; create a new one")
        if self._session is None:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if self.endpoint.has_key:
                headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
            connector = aiohttp.TCPConnector(limit=self.config.concurrency, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers,
                timeout=self.config.timeouts.client_timeout(),
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- requests ----------------------------------------------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent for `request`, as a dict."""
        url = None
        if request.image_jpeg is not None:
            url = "data:image/jpeg;base64," + base64.b64encode(request.image_jpeg).decode("ascii")
        return self._body(request, url)

    def encode_request(self, request: ChatRequest) -> bytes:
        """The exact bytes POSTed for `request`.

        The base64 image is spliced into the serialized JSON rather than passed through
        `json.dumps`, which would scan (and copy) hundreds of kilobytes per call for nothing.
        """
        if request.image_jpeg is None:
            return json.dumps(self._body(request, None), ensure_ascii=False).encode("utf-8")
        text = json.dumps(self._body(request, _IMAGE_SLOT), ensure_ascii=False)
        before, _, after = text.partition(_IMAGE_SLOT)
        return b"".join((before.encode("utf-8"), b"data:image/jpeg;base64,",
                         base64.b64encode(request.image_jpeg), after.encode("utf-8")))

    def _body(self, request: ChatRequest, image_url: str | None) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if image_url is not None:
            content.append({"type": "image_url", "image_url": {"url": image_url}})
        content.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content})
        return {
            "model": self.model,
            "messages": messages,
            "temperature": (self.config.temperature if request.temperature is None
                            else request.temperature),
            "max_tokens": self._max_tokens(request),
            "stream": False,
        }

    def _max_tokens(self, request: ChatRequest) -> int:
        return self.config.max_tokens if request.max_tokens is None else request.max_tokens

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send one request, retrying transient failures; raises the last typed error."""
        session = self._ensure_session()
        payload = self.encode_request(request)
        max_tokens = self._max_tokens(request)
        retry = 0
        while True:
            error: EndpointError | None = None
            epoch = await self.limiter.acquire()
            try:
                response = await self._attempt(session, payload, request.image_jpeg,
                                               max_tokens=max_tokens)
            except EndpointError as failure:
                error = failure
            finally:
                self.limiter.release()
            if error is None:
                self.limiter.record_success()
                return replace(response, retries=retry)
            if isinstance(error, RateLimitedError):
                self.limiter.record_rate_limited(epoch)
                if error.retry_after:
                    self.limiter.hold(min(error.retry_after, self.config.retry.retry_after_cap))
            if not error.retryable or retry >= self.config.retry.max_retries:
                if retry:
                    error.args = (f"{error.args[0]} (gave up after {retry} "
                                  f"retr{'y' if retry == 1 else 'ies'})",)
                raise error
            retry += 1
            if self._on_retry is not None:
                self._on_retry(error)
            await asyncio.sleep(self.config.retry.delay(error, retry, self._rng))

    async def check_connection(self) -> ChatResponse:
        """One tiny text-only request, no retries: proves URL, key and model work."""
        session = self._ensure_session()
        request = ChatRequest(prompt="Reply with the single word OK.", image_jpeg=None,
                              temperature=0.0, max_tokens=16)
        payload = self.encode_request(request)
        return await self._attempt(session, payload, None, max_tokens=16, lenient=True)

    async def _attempt(self, session: aiohttp.ClientSession, payload: bytes,
                       image: bytes | None, *, max_tokens: int,
                       lenient: bool = False) -> ChatResponse:
        started = time.perf_counter()
        try:
            async with session.post(self.url, data=payload) as response:
                status = response.status
                headers = response.headers
                content_type = response.content_type
                body = await response.read()
        except asyncio.CancelledError:
            raise
        except (aiohttp.ConnectionTimeoutError, aiohttp.SocketTimeoutError,
                asyncio.TimeoutError) as exc:
            raise self._timeout_error(exc, image) from None
        except aiohttp.ClientConnectorError as exc:
            cause = "connection refused" if isinstance(exc.os_error, ConnectionRefusedError) \
                else f"could not connect ({type(exc).__name__})"
            raise EndpointConnectionError(self._message(
                cause, image, "check that the server is running and the base URL is right"
            )) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                aiohttp.ClientOSError, aiohttp.ClientConnectionError) as exc:
            reset = isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET
            what = "the server reset the connection" if reset else "the connection was dropped"
            raise EndpointConnectionError(self._message(
                f"{what} ({type(exc).__name__})", image,
                "the request will be retried; if it persists, check the server's logs",
            )) from None
        except aiohttp.ClientError as exc:
            raise EndpointConnectionError(self._message(
                f"request failed ({type(exc).__name__})", image,
                "check the base URL and the server",
            )) from None
        except OSError as exc:
            raise EndpointConnectionError(self._message(
                f"network error ({type(exc).__name__})", image,
                "check the network and the server",
            )) from None
        latency_ms = (time.perf_counter() - started) * 1000.0

        wait = rate_limit_wait(headers)
        if wait:
            self.limiter.hold(min(wait, self.config.retry.retry_after_cap))
        if status != 200:
            raise self._status_error(status, headers, content_type, body, image)
        return self._parse_success(body, content_type, image, latency_ms,
                                   max_tokens=max_tokens, lenient=lenient)

    # -- classification ----------------------------------------------------------------

    def _message(self, cause: str, image: bytes | None, fix: str) -> str:
        return (f"{cause}: POST {self.shown_url} (model {self.model}, {image_size_text(image)}, "
                f"key {self.endpoint.masked_key}); {fix}")

    def _scrub(self, text: str) -> str:
        key = self.endpoint.api_key
        if key and len(key) >= 4:
            text = text.replace(key, self.endpoint.masked_key)
        text = " ".join(text.split())
        if len(text) > SERVER_TEXT_SHOWN:
            text = text[:SERVER_TEXT_SHOWN] + "..."
        return text

    def _server_text(self, body: bytes, content_type: str) -> str:
        """The endpoint's own explanation, from a JSON error body; '' for HTML or nothing."""
        text = body.decode("utf-8", errors="replace").strip()
        if not text or _looks_like_html(text, content_type):
            return ""
        try:
            data = json.loads(text)
        except ValueError:
            return self._scrub(text)
        found = _error_text(data)
        return self._scrub(found if found is not None else text)

    def _timeout_error(self, exc: BaseException, image: bytes | None) -> EndpointTimeoutError:
        timeouts = self.config.timeouts
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            cause = f"no connection within the {timeouts.connect:g} s connect timeout"
        elif isinstance(exc, aiohttp.SocketTimeoutError):
            cause = f"no data for {timeouts.first_byte:g} s (first-byte / read timeout)"
        else:
            cause = f"no complete answer within the {timeouts.total:g} s total timeout"
        return EndpointTimeoutError(self._message(
            cause, image, "the request will be retried; a slow or overloaded endpoint may need "
            "lower concurrency or longer timeouts"))

    def _status_error(self, status: int, headers: Mapping[str, str], content_type: str,
                      body: bytes, image: bytes | None) -> EndpointError:
        said = self._server_text(body, content_type)
        said_part = f" ({said})" if said else ""
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if status in (401, 403):
            if self.endpoint.has_key:
                used = f"the key {self.endpoint.masked_key} from {self.endpoint.key_source}"
            else:
                used = f"no API key (key source: {self.endpoint.key_source})"
            return AuthenticationError(self._message(
                f"HTTP {status}: the endpoint refused the request{said_part}; it was sent with "
                f"{used}", image,
                "set a valid key with the VQA_API_KEY environment variable, a VQA_API_KEY entry "
                "in .streamlit/secrets.toml, or the API key field of the run form"),
                status=status)
        if status in (400, 422):
            return BadRequestError(self._message(
                f"HTTP {status}: the endpoint rejected the request{said_part}", image,
                "check that the model accepts images and the parameters (max_tokens, "
                "temperature) are within its limits"), status=status)
        if status == 404:
            hint = "check that the base URL ends with /v1 and the model name is one the " \
                   "server lists at GET /v1/models"
            if self.model != self.endpoint.model:
                hint += (f"; the configured name '{self.endpoint.model}' was normalized to "
                         f"'{self.model}' - turn model name normalization off if the server "
                         "expects it verbatim")
            return NotFoundError(self._message(
                f"HTTP 404: not found{said_part}", image, hint), status=status)
        if status == 413:
            return PayloadTooLargeError(self._message(
                f"HTTP 413: the request is too large for the endpoint{said_part}", image,
                "raise the server's request size limit or use smaller images"), status=status)
        if status == 429:
            return RateLimitedError(self._message(
                f"HTTP 429: rate limited{said_part}", image,
                "requests are retried with backoff; lower the concurrency or raise the "
                "account's rate limit if this persists"), status=status, retry_after=retry_after)
        if status == 408:
            return EndpointTimeoutError(self._message(
                "HTTP 408: the server timed out waiting for the request", image,
                "the request will be retried"), status=status)
        if status >= 500:
            if _looks_like_html(body.decode("utf-8", errors="replace"), content_type):
                what = f"HTTP {status}: an HTML error page (probably a proxy or load balancer)"
            else:
                what = f"HTTP {status}: server error{said_part}"
            return ServerError(self._message(
                what, image, "the request will be retried; if it persists, check the server"),
                status=status, retry_after=retry_after)
        return BadRequestError(self._message(
            f"unexpected HTTP {status}{said_part}", image,
            "check the base URL: it should point at an OpenAI-compatible /v1 API"),
            status=status)

    def _parse_success(self, body: bytes, content_type: str, image: bytes | None,
                       latency_ms: float, *, max_tokens: int, lenient: bool) -> ChatResponse:
        text = body.decode("utf-8", errors="replace")
        fix = "the request will be retried; check that the base URL points at an " \
              "OpenAI-compatible /v1 API"
        if _looks_like_html(text, content_type):
            raise MalformedResponseError(self._message(
                "HTTP 200 with an HTML page instead of JSON", image, fix), status=200)
        try:
            data = json.loads(text)
        except ValueError:
            stripped = text.strip()
            if not stripped:
                cause = "HTTP 200 with an empty body"
            elif stripped[0] in "{[":
                cause = f"HTTP 200 with cut-short JSON ({len(body)} bytes)"
            else:
                cause = f"HTTP 200 with a non-JSON body ({len(body)} bytes)"
            raise MalformedResponseError(self._message(cause, image, fix), status=200) from None
        choice = _first_choice(data)
        if choice is None:
            said = _error_text(data) if isinstance(data, dict) else None
            cause = "HTTP 200 without choices" + (f" ({self._scrub(said)})" if said else "")
            raise MalformedResponseError(self._message(cause, image, fix), status=200)
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        content = _content_text(message.get("content") if message else choice.get("text"))
        finish_reason = choice.get("finish_reason")
        finish = str(finish_reason) if finish_reason is not None else None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        response = ChatResponse(
            text=content,
            finish_reason=finish,
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            latency_ms=latency_ms,
            model=str(data.get("model") or self.model),
        )
        if lenient:
            return response
        if finish == "length":
            raise TruncatedError(self._message(
                f"the answer was cut off at max_tokens={max_tokens} "
                "(finish_reason=length)", image,
                "raise max tokens in the run settings"), status=200)
        if not content.strip():
            raise EmptyContentError(self._message(
                "the model answered with empty content", image,
                "the request will be retried; if it persists, check that the model supports "
                "images"), status=200)
        return response


def _looks_like_html(text: str, content_type: str) -> bool:
    if content_type == "text/html":
        return True
    head = text.lstrip()[:64].lower()
    return head.startswith("<!doctype html") or head.startswith("<html")


def _error_text(data: Any) -> str | None:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            inner = error.get("message")
            return str(inner) if inner is not None else json.dumps(error)[:SERVER_TEXT_SHOWN]
        if isinstance(error, str):
            return error
        for name in ("message", "detail"):
            if data.get(name) is not None:
                value = data[name]
                return value if isinstance(value, str) else json.dumps(value)[:SERVER_TEXT_SHOWN]
    return None


def _first_choice(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    return choices[0]


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with content parts
        parts = [part.get("text", "") for part in content
                 if isinstance(part, dict) and isinstance(part.get("text"), str)]
        return "".join(parts)
    return str(content)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
