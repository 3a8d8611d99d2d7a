"""A purpose-built OpenAI-compatible endpoint for exact fault sequences in tests.

It runs a real aiohttp server on 127.0.0.1 in a thread of its own (so an engine host in
another thread can call it), and answers each POST with whatever the test's `script`
returns for it: a normal answer, a status with headers, a stall, a dropped connection, or
raw bytes. Every request is logged with its role (answer / distractors), so a test can
count what was asked.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from vqa_engine.prompts import prompt_role, read_distractor_prompt


@dataclass
class Reply:
    """What the endpoint does with one request."""

    text: str | None = None  # the model's content (status 200, JSON body)
    status: int = 200
    body: bytes | None = None  # raw body instead of a JSON completion
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    finish_reason: str = "stop"
    stall: float = 0.0  # seconds to wait before answering
    reset: bool = False  # drop the connection without answering


@dataclass(frozen=True)
class Seen:
    role: str | None
    prompt: str
    authorization: str | None
    image_bytes: int
    model: str


Script = Callable[[Seen, int], Reply]


def default_reply(seen: Seen, _count: int) -> Reply:
    """Plausible answers in the requested layouts."""
    if seen.role == "distractors":
        ask = read_distractor_prompt(seen.prompt)
        count = ask.count or 3
        return Reply(json.dumps({"options": [f"wrong option {i + 1}" for i in range(count)]}))
    return Reply(json.dumps({"answer": "a red bicycle", "explanation": "It is in the middle."}))


def completion(text: str, finish_reason: str = "stop") -> bytes:
    return json.dumps({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
    }).encode()


class ScriptedEndpoint:
    """`with ScriptedEndpoint(script) as endpoint:` ... `endpoint.base_url`, `endpoint.seen`."""

    def __init__(self, script: Script = default_reply, *, api_key: str | None = None) -> None:
        self.script = script
        self.api_key = api_key
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def count(self, role: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.seen if role is None or s.role == role)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        content = body["messages"][-1]["content"]
        prompt = next(part["text"] for part in content if part.get("type") == "text")
        image = next((part["image_url"]["url"] for part in content
                      if part.get("type") == "image_url"), "")
        seen = Seen(prompt_role(prompt), prompt, request.headers.get("Authorization"),
                    len(image), body.get("model", ""))
        with self._lock:
            self.seen.append(seen)
            number = len(self.seen)
        if self.api_key is not None and seen.authorization != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "Incorrect API key provided"}},
                                     status=401)
        reply = self.script(seen, number)
        if reply.stall:
            await asyncio.sleep(reply.stall)
        if reply.reset:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=200)
        if reply.body is not None:
            return web.Response(body=reply.body, status=reply.status,
                                content_type=reply.content_type, headers=reply.headers)
        if reply.status != 200:
            return web.json_response({"error": {"message": f"scripted {reply.status}"}},
                                     status=reply.status, headers=reply.headers)
        return web.Response(body=completion(reply.text or "", reply.finish_reason),
                            content_type="application/json", headers=reply.headers)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def __enter__(self) -> ScriptedEndpoint:
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_exc: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
