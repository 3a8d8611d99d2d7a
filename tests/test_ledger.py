"""The request ledger: keys identify requests exactly, only successes are reused."""

from __future__ import annotations

from db.engine import Database
from vqa_engine.ledger import (
    LedgerRecord,
    Role,
    duplicate_successes,
    find_successes,
    record_entries,
    request_key,
)

SHA = "ab" * 32
PARAMS = {"temperature": 0.7, "max_tokens": 1024}


def key(**changes: object) -> str:
    values: dict[str, object] = dict(role=Role.ANSWER, model="m", image_sha256=SHA,
                                     prompt="What?", params=PARAMS, regeneration=0)
    values.update(changes)
    return request_key(
        values["role"], values["model"], values["image_sha256"], values["prompt"],  # type: ignore[arg-type]
        values["params"], regeneration=values["regeneration"],  # type: ignore[arg-type]
    )


def test_the_key_is_a_stable_sha256_independent_of_parameter_order() -> None:
    first = key()
    assert first == key(params={"max_tokens": 1024, "temperature": 0.7})
    assert len(first) == 64 and int(first, 16) >= 0


def test_every_part_of_the_request_changes_the_key() -> None:
    base = key()
    variants = [
        key(role=Role.DISTRACTORS),
        key(model="other"),
        key(image_sha256="cd" * 32),
        key(prompt="What? Reviewer's reason: wrong colour"),
        key(params={"temperature": 0.2, "max_tokens": 1024}),
        key(params={"temperature": 0.7, "max_tokens": 512}),
        key(regeneration=1),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def record(key_: str, ok: bool, text: str | None = "{}", **changes: object) -> LedgerRecord:
    values: dict[str, object] = dict(key=key_, role=Role.ANSWER, model="m", image_sha256=SHA,
                                     ok=ok, response_text=text, latency_ms=12.5,
                                     prompt_tokens=10, completion_tokens=3)
    values.update(changes)
    return LedgerRecord(**values)  # type: ignore[arg-type]


def test_failures_are_stored_but_never_returned_as_hits(database: Database) -> None:
    with database.write() as session:
        record_entries(session, [
            record("k-failed", False, "garbage", error_type="format", error_message="no answer"),
            record("k-error", False, None, error_type="server"),
            record("k-ok", True, '{"answer": "3"}'),
        ])
    with database.read() as session:
        hits = find_successes(session, ["k-failed", "k-error", "k-ok", "k-unknown"])
    assert set(hits) == {"k-ok"}
    assert hits["k-ok"].response_text == '{"answer": "3"}'
    assert hits["k-ok"].prompt_tokens == 10


def test_a_success_after_failures_for_the_same_key_is_found(database: Database) -> None:
    with database.write() as session:
        record_entries(session, [record("k", False, "bad", error_type="format")])
        record_entries(session, [record("k", True, "good")])
    with database.read() as session:
        assert find_successes(session, ["k"])["k"].response_text == "good"
        assert duplicate_successes(session) == {}


def test_lookups_of_many_keys_are_chunked_and_complete(database: Database) -> None:
    keys = [f"key-{index}" for index in range(1234)]
    with database.write() as session:
        record_entries(session, [record(k, True, k) for k in keys])
    with database.read() as session:
        hits = find_successes(session, keys + ["missing"])
    assert len(hits) == 1234 and hits["key-999"].response_text == "key-999"


def test_duplicate_successes_reports_requests_paid_twice(database: Database) -> None:
    with database.write() as session:
        record_entries(session, [record("a", True), record("a", True), record("b", True)])
    with database.read() as session:
        assert duplicate_successes(session) == {"a": 2}
