"""The "Test connection" button: one tiny real request, and a plain report of how it went.

The request is text only and short (`VLMClient.check_connection`), so it costs next to
nothing and proves the URL, the key and the model name in one go. Failures are the
client's own typed errors, whose messages name the URL and model and show the key masked;
they are raised unchanged for the page to show.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from vqa_engine.client import ClientConfig, RetryPolicy, Timeouts, VLMClient
from vqa_engine.settings import Endpoint

CHECK_TIMEOUTS = Timeouts(connect=5.0, first_byte=30.0, total=45.0)


@dataclass(frozen=True)
class ConnectionReport:
    base_url: str
    model: str
    latency_ms: float
    reply: str
    key: str  # masked

    def __str__(self) -> str:
        reply = self.reply.strip().replace("\n", " ")
        if len(reply) > 60:
            reply = reply[:59] + "…"
        return (
            f"{self.base_url} answered in {self.latency_ms:.0f} ms with model {self.model} "
            f"(key {self.key}): {reply!r}"
        )


async def check_endpoint_async(endpoint: Endpoint, *, normalize_model: bool = True) -> ConnectionReport:
    config = ClientConfig(
        endpoint=endpoint,
        concurrency=1,
        timeouts=CHECK_TIMEOUTS,
        retry=RetryPolicy(max_retries=0),
        normalize_model=normalize_model,
    )
    async with VLMClient(config) as client:
        response = await client.check_connection()
    return ConnectionReport(
        base_url=endpoint.base_url,
        model=response.model or client.model,
        latency_ms=response.latency_ms,
        reply=response.text,
        key=endpoint.masked_key,
    )


def check_endpoint(endpoint: Endpoint, *, normalize_model: bool = True) -> ConnectionReport:
    """Blocking form for a page or a command (must not be called inside a running loop)."""
    return asyncio.run(check_endpoint_async(endpoint, normalize_model=normalize_model))
