"""The request ledger: no model request is paid for twice.

Every model call is keyed by the sha256 of its canonical form: the role (`answer` /
`distractors`), the model name as sent, the image's content hash (never its base64), the
prompt (which already carries a regeneration's reason and previous answer), the sampling
parameters and the item's regeneration number. Every response is stored, successful or
not, with usage, latency and error class; raw text is kept when parsing failed.

Before calling the model the engine looks the key up among *successful* entries only: a
hit is the answer for free, so a crash between a multiple-choice item's answer call and
its distractor call resumes at the distractor call, and re-running a finished dataset
costs nothing. Failures are never reused. A deliberate regeneration has a new number and
usually a reason, hence a new key: the ledger never hands back an answer a curator has
just rejected.

Lookups are batched (`find_successes`) and writes are bulk inserts (`record_entries`), so
the worker makes no database round trip per request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from db.models import LedgerEntry

KEY_VERSION = 1
LOOKUP_CHUNK = 500  # keys per IN (...) query; well under every driver's parameter limit
_INSERT = insert(LedgerEntry.__table__)


class Role:
    """What a request asks for; part of its key."""

    ANSWER = "answer"
    DISTRACTORS = "distractors"


def request_key(
    role: str,
    model: str,
    image_sha256: str | None,
    prompt: str,
    params: Mapping[str, Any],
    *,
    system: str | None = None,
    regeneration: int = 0,
) -> str:
    """The sha256 (hex) of the canonical JSON form of one model request."""
    canonical = {
        "v": KEY_VERSION,
        "role": role,
        "model": model,
        "image": image_sha256,
        "system": system,
        "prompt": prompt,
        "params": {name: params[name] for name in sorted(params)},
        "regeneration": regeneration,
    }
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class LedgerRecord:
    """One model response (or failure) to be stored."""

    key: str
    role: str
    model: str
    image_sha256: str | None
    ok: bool
    response_text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    run_id: int | None = None

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RECORD_FIELDS}


_RECORD_FIELDS = tuple(f.name for f in fields(LedgerRecord))


@dataclass(frozen=True)
class LedgerHit:
    """A stored successful response: what a repeated request would have returned."""

    key: str
    response_text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


def find_successes(session: Session, keys: Iterable[str]) -> dict[str, LedgerHit]:
    """The successful entries among `keys` (the newest one per key)."""
    wanted = list(dict.fromkeys(keys))
    hits: dict[str, LedgerHit] = {}
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        chunk = wanted[start : start + LOOKUP_CHUNK]
        rows = session.execute(
            select(
                LedgerEntry.key,
                LedgerEntry.response_text,
                LedgerEntry.finish_reason,
                LedgerEntry.prompt_tokens,
                LedgerEntry.completion_tokens,
            )
            .where(LedgerEntry.key.in_(chunk), LedgerEntry.ok.is_(True))
            .order_by(LedgerEntry.id)
        )
        for key, text, finish, prompt_tokens, completion_tokens in rows:
            if text is not None:
                hits[key] = LedgerHit(key, text, finish, prompt_tokens or 0, completion_tokens or 0)
    return hits


def record_entries(session: Session, records: Sequence[LedgerRecord]) -> None:
    """Store responses in one bulk insert."""
    if records:
        # Core insert of the table: the ORM bulk path costs several times more per row.
        session.execute(_INSERT, [record.row() for record in records])


def duplicate_successes(session: Session) -> dict[str, int]:
    """Keys with more than one successful entry: requests that were paid for twice."""
    rows = session.execute(
        select(LedgerEntry.key, func.count())
        .where(LedgerEntry.ok.is_(True))
        .group_by(LedgerEntry.key)
        .having(func.count() > 1)
    )
    return {key: count for key, count in rows}
