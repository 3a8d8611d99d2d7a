"""Generation runs end to end: the engine host, a real SQLite file, real endpoints on
127.0.0.1 (the simulator, or a scripted server for exact fault sequences)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from db.engine import Database
from db.models import Generation, Item, ItemStatus, LedgerEntry, RegenerateScope, Run, RunStatus
from vqa_engine.client import RetryPolicy, Timeouts
from vqa_engine.generator import GenerationSettings
from vqa_engine.host import EngineHost
from vqa_engine.ledger import duplicate_successes
from vqa_engine.runs import (
    ItemSelection,
    RunProgress,
    RunSettings,
    cancel_run,
    pause_run,
    reclaim_stale_items,
    request_regeneration,
    resume_run,
    run_progress,
    start_run,
    utcnow,
    worker_identity,
)
from vqa_engine.settings import Endpoint
from vqa_engine.simulator import SimulatorConfig, SimulatorServer
from vqa_engine.worker import WorkerSettings
from tests.generation_data import items_of, seed_dataset
from tests.scripted_endpoint import Reply, ScriptedEndpoint, Seen, completion, default_reply

FAST = WorkerSettings(poll_interval=0.05, heartbeat_interval=0.5, pause_grace=0.3,
                      missing_key_grace=0.3)
QUICK_RETRY = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05, retry_after_cap=1.0)


def settings(**changes: object) -> RunSettings:
    values: dict[str, object] = dict(concurrency=4, batch_size=4, retry=QUICK_RETRY,
                                     timeouts=Timeouts(connect=2, first_byte=0.5, total=3.0))
    values.update(changes)
    return RunSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def host_factory(database: Database, data_dir: Path) -> Iterator[Callable[..., EngineHost]]:
    hosts: list[EngineHost] = []

    def make(worker: WorkerSettings = FAST, **kwargs: object) -> EngineHost:
        host = EngineHost(database, data=data_dir, settings=worker, **kwargs)  # type: ignore[arg-type]
        host.start()
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.stop(10)


def wait_for(database: Database, run_id: int, done: Callable[[RunProgress], bool],
             timeout: float = 20.0) -> RunProgress:
    deadline = time.monotonic() + timeout
    while True:
        progress = run_progress(database, run_id)
        if done(progress):
            return progress
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} did not get there in {timeout} s: {progress}")
        time.sleep(0.05)


def finished(progress: RunProgress) -> bool:
    return progress.status.is_finished


def ledger_rows(database: Database) -> list[LedgerEntry]:
    with database.read() as session:
        return list(session.scalars(select(LedgerEntry).order_by(LedgerEntry.id)))


def assert_nothing_asked_again_after_success(database: Database) -> None:
    """For every request key, no entry follows its successful one."""
    rows_by_key: dict[str, list[LedgerEntry]] = defaultdict(list)
    for row in ledger_rows(database):
        rows_by_key[row.key].append(row)
    for key, rows in rows_by_key.items():
        oks = [index for index, row in enumerate(rows) if row.ok]
        assert len(oks) <= 1, f"request {key[:12]} answered {len(oks)} times"
        if oks:
            assert oks[0] == len(rows) - 1, f"request {key[:12]} was sent again after success"


def simulator_endpoint(simulator: SimulatorServer) -> Endpoint:
    return Endpoint(base_url=simulator.base_url, model="simulated-vlm")


# ---------------------------------------------------------------- the happy path


def test_a_run_generates_every_item_once_and_counts_it(
    database: Database, data_dir: Path, simulator: SimulatorServer,
    host_factory: Callable[..., EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=12, fill_in_blank=5)
    run_id = start_run(database, dataset, simulator_endpoint(simulator), settings())
    host_factory()
    progress = wait_for(database, run_id, finished)

    assert progress.status is RunStatus.COMPLETED
    assert (progress.total, progress.generated, progress.failed) == (17, 17, 0)
    assert progress.requests == 12 * 2 + 5 == simulator.stats.requests
    assert simulator.stats.repeated() == {}
    assert progress.latency_p50_ms is not None and progress.latency_p95_ms is not None
    items = items_of(database, dataset)
    assert {item.status for item in items} == {ItemStatus.GENERATED}
    assert all(item.attempts == 1 and item.claimed_by is None for item in items)
    with database.read() as session:
        current = {g.item_id: g for g in session.scalars(
            select(Generation).where(Generation.id.in_([i.current_generation_id for i in items])))}
    for item in items:
        generation = current[item.id]
        assert generation.ok and generation.run_id == run_id and generation.prompt_version
        if item.question_type.value == "multiple_choice":
            assert generation.options[generation.correct_letter] == generation.answer
            assert len(generation.options) == len(generation.distractors) + 1
        else:
            assert generation.options == {} and generation.answer
    assert len(ledger_rows(database)) == 29


def test_generating_again_pays_for_nothing_and_gives_identical_results(
    database: Database, data_dir: Path, simulator: SimulatorServer,
    host_factory: Callable[..., EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=6, fill_in_blank=2)
    first = start_run(database, dataset, simulator_endpoint(simulator), settings())
    host_factory()
    wait_for(database, first, finished)
    before = {i.id: i.current_generation_id for i in items_of(database, dataset)}
    with database.read() as session:
        options_before = {g.item_id: g.options for g in session.scalars(
            select(Generation).where(Generation.id.in_(list(before.values()))))}
    requests = simulator.stats.requests

    second = start_run(database, dataset, simulator_endpoint(simulator), settings(),
                       ItemSelection.ALL)
    progress = wait_for(database, second, finished)
    assert progress.status is RunStatus.COMPLETED and progress.generated == 8
    assert simulator.stats.requests == requests
    assert progress.requests == 0 and progress.ledger_hits == 6 * 2 + 2
    after = items_of(database, dataset)
    with database.read() as session:
        options_after = {g.item_id: g.options for g in session.scalars(
            select(Generation).where(Generation.id.in_([i.current_generation_id for i in after])))}
    assert options_after == options_before
    assert all(i.current_generation_id != before[i.id] for i in after)  # history kept


def test_sequential_generation_with_concurrency_one(
    database: Database, data_dir: Path, simulator: SimulatorServer,
    host_factory: Callable[..., EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=3)
    run_id = start_run(database, dataset, simulator_endpoint(simulator),
                       settings(concurrency=1, batch_size=1))
    host_factory()
    assert wait_for(database, run_id, finished).generated == 3
    assert simulator.stats.peak_in_flight == 1


# ---------------------------------------------------------------- exact fault sequences


def first_times(times: int, reply: Callable[[], Reply]) -> Callable[[Seen, int], Reply]:
    """Each distinct request gets `reply` for its first `times` sends, then a good answer."""
    sent: Counter[str] = Counter()
    lock = threading.Lock()

    def script(seen: Seen, number: int) -> Reply:
        with lock:
            sent[seen.prompt] += 1
            count = sent[seen.prompt]
        return reply() if count <= times else default_reply(seen, number)

    return script


FAULTS: dict[str, tuple[Callable[[Seen, int], Reply], str]] = {
    "429 with Retry-After, then success": (
        first_times(1, lambda: Reply(status=429, headers={"Retry-After": "0.1"})), "generated"),
    "500 twice, then success": (first_times(2, lambda: Reply(status=500)), "generated"),
    "a stalled read beyond the timeout": (
        first_times(1, lambda: Reply(text='{"answer": "late"}', stall=1.0)), "generated"),
    "connection reset": (first_times(1, lambda: Reply(reset=True)), "generated"),
    "HTML 502": (first_times(1, lambda: Reply(
        status=502, body=b"<html><body>502 Bad Gateway</body></html>",
        content_type="text/html")), "generated"),
    "non-JSON 200": (first_times(1, lambda: Reply(body=b"upstream says hello")), "generated"),
    "cut-short JSON": (first_times(1, lambda: Reply(body=completion('{"answer": "x"}')[:40])),
                       "generated"),
    "empty content": (first_times(1, lambda: Reply(text="")), "generated"),
    "finish_reason=length": (first_times(1, lambda: Reply(text='{"answer": "a red bic',
                                                          finish_reason="length")), "generated"),
    "400 with a JSON error": (lambda seen, n: Reply(status=400), "failed"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_item_ends_generated_or_failed_with_a_reason_through_faults(
    fault: str, database: Database, data_dir: Path, host_factory: Callable[..., EngineHost],
) -> None:
    script, expected = FAULTS[fault]
    dataset = seed_dataset(database, data_dir, multiple_choice=3, fill_in_blank=1)
    with ScriptedEndpoint(script) as endpoint:
        run_id = start_run(database, dataset, Endpoint(base_url=endpoint.base_url, model="m"),
                           settings())
        host_factory()
        progress = wait_for(database, run_id, finished)
    assert progress.status is RunStatus.COMPLETED
    items = items_of(database, dataset)
    assert {item.status.value for item in items} == {expected}
    for item in items:
        if item.status is ItemStatus.FAILED:
            assert item.last_error and "400" in item.last_error
            assert item.attempts == 1  # a permanent error is not retried
    if expected == "generated":
        assert progress.retries + len([r for r in ledger_rows(database) if not r.ok]) >= 1
    assert_nothing_asked_again_after_success(database)


def test_a_persistent_format_problem_ends_the_item_failed_at_the_attempt_limit(
    database: Database, data_dir: Path, host_factory: Callable[..., EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=2)
    with ScriptedEndpoint(lambda seen, n: Reply(text="N/A")) as endpoint:
        run_id = start_run(
            database, dataset, Endpoint(base_url=endpoint.base_url, model="m"),
            settings(generation=GenerationSettings(attempt_limit=2)))
        host_factory()
        progress = wait_for(database, run_id, finished)
        assert endpoint.count() == 4
    assert progress.failed == 2 and progress.errors_by_type == {"format": 4}
    for item in items_of(database, dataset):
        assert item.status is ItemStatus.FAILED and item.attempts == 2
        assert item.last_error and item.last_error.startswith("answer:")
    with database.read() as session:
        failures = list(session.scalars(select(Generation).where(Generation.ok.is_(False))))
    assert len(failures) == 4 and all(g.raw_answer == "N/A" for g in failures)


# ---------------------------------------------------------------- authentication

SECRET = "sk-test-RUNS-7c1e9d2b4a"


def test_a_401_mid_run_stops_the_run_and_leaves_the_rest_pending(
    database: Database, data_dir: Path, host_factory: Callable[..., EngineHost],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VQA_API_KEY", SECRET)
    dataset = seed_dataset(database, data_dir, multiple_choice=0, fill_in_blank=30)

    def script(seen: Seen, number: int) -> Reply:
        return default_reply(seen, number) if number <= 5 else Reply(status=401)

    with ScriptedEndpoint(script) as endpoint:
        endpoint_config = Endpoint(base_url=endpoint.base_url, model="m", api_key=SECRET,
                                   key_source="environment variable VQA_API_KEY")
        run_id = start_run(database, dataset, endpoint_config,
                           settings(concurrency=2, batch_size=2))
        host_factory()
        progress = wait_for(database, run_id, finished)
        sent = endpoint.count()
        time.sleep(0.3)
        assert endpoint.count() == sent  # nothing more after the stop
    assert progress.status is RunStatus.FAILED
    message = progress.message or ""
    assert "401" in message and "environment variable VQA_API_KEY" in message
    assert "sk-...9d2b4a"[-4:] in message and SECRET not in message
    assert sent <= 5 + 2
    statuses = Counter(item.status for item in items_of(database, dataset))
    assert statuses[ItemStatus.FAILED] == 0 and statuses[ItemStatus.GENERATING] == 0
    assert statuses[ItemStatus.GENERATED] >= 4
    assert SECRET not in str((run_progress(database, run_id)))


def test_a_run_form_key_lost_in_a_restart_pauses_the_run_asking_for_it(
    database: Database, data_dir: Path, simulator: SimulatorServer,
    host_factory: Callable[..., EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=2)
    endpoint = Endpoint(base_url=simulator.base_url, model="m", api_key="sk-form-12345678",
                        key_source="the run form")
    run_id = start_run(database, dataset, endpoint, settings())
    restarted = host_factory()  # a fresh host never heard of the key
    progress = wait_for(database, run_id, lambda p: p.status is RunStatus.PAUSED, timeout=5)
    assert "enter it again" in (progress.message or "")
    assert simulator.stats.requests == 0
    restarted.stop()

    host = host_factory()
    host.provide_key(run_id, "sk-form-12345678")
    assert resume_run(database, run_id)
    assert wait_for(database, run_id, finished).status is RunStatus.COMPLETED


# ---------------------------------------------------------------- pause, resume, cancel


def test_pause_takes_effect_quickly_and_resume_finishes_the_run(
    database: Database, data_dir: Path, host_factory: Callable[..., EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=0, fill_in_blank=40)
    with SimulatorServer(SimulatorConfig(latency_ms=150)) as slow:
        run_id = start_run(database, dataset, simulator_endpoint(slow), settings())
        host_factory()
        wait_for(database, run_id, lambda p: p.generated >= 4)
        asked = time.monotonic()
        assert pause_run(database, run_id)
        wait_for(database, run_id, lambda p: p.in_progress == 0, timeout=5)
        assert time.monotonic() - asked < 2.0
        assert slow.stats.in_flight == 0
        paused = run_progress(database, run_id)
        requests = slow.stats.requests
        time.sleep(0.5)
        assert slow.stats.requests == requests
        assert run_progress(database, run_id).generated == paused.generated
        assert paused.status is RunStatus.PAUSED and paused.pending > 0

        assert resume_run(database, run_id)
        progress = wait_for(database, run_id, finished)
    assert progress.status is RunStatus.COMPLETED and progress.generated == 40
    assert_nothing_asked_again_after_success(database)


def test_cancel_stops_within_a_second_or_two_and_returns_items_to_pending(
    database: Database, data_dir: Path, host_factory: Callable[..., EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=0, fill_in_blank=40)
    with SimulatorServer(SimulatorConfig(latency_ms=300)) as slow:
        run_id = start_run(database, dataset, simulator_endpoint(slow), settings())
        host_factory()
        wait_for(database, run_id, lambda p: p.generated >= 1)
        asked = time.monotonic()
        assert cancel_run(database, run_id)
        deadline = time.monotonic() + 2.0
        while slow.stats.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert slow.stats.in_flight == 0 and time.monotonic() - asked < 2.0
        requests = slow.stats.requests
        time.sleep(0.4)
        assert slow.stats.requests == requests
    progress = run_progress(database, run_id)
    assert progress.status is RunStatus.CANCELLED
    statuses = Counter(item.status for item in items_of(database, dataset))
    assert statuses[ItemStatus.GENERATING] == 0
    assert statuses[ItemStatus.PENDING] + statuses[ItemStatus.GENERATED] == 40
    assert statuses[ItemStatus.PENDING] > 0


# ---------------------------------------------------------------- crashes and resuming


def dead_worker_id() -> str:
    """The id a worker in a process of this machine that has exited would have had."""
    child = subprocess.Popen(["true"])
    child.wait()
    return worker_identity("dead").replace(f":{os.getpid()}:", f":{child.pid}:")


def test_items_left_generating_by_a_dead_worker_are_reclaimed_and_the_run_completes(
    database: Database, data_dir: Path, simulator: SimulatorServer,
    host_factory: Callable[..., EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=4, fill_in_blank=4)
    run_id = start_run(database, dataset, simulator_endpoint(simulator), settings())
    ids = [item.id for item in items_of(database, dataset)]
    with database.write() as session:  # as a killed process leaves them
        session.execute(update(Item).where(Item.id.in_(ids[:3])).values(
            status=ItemStatus.GENERATING, claimed_by=dead_worker_id(),
            claimed_at=utcnow()))
        session.execute(update(Item).where(Item.id.in_(ids[3:5])).values(
            status=ItemStatus.GENERATING, claimed_by="elsewhere:1:x",
            claimed_at=utcnow() - timedelta(hours=1)))
        session.execute(update(Run).where(Run.id == run_id).values(status=RunStatus.RUNNING))
    host_factory()
    progress = wait_for(database, run_id, finished)
    assert progress.status is RunStatus.COMPLETED and progress.generated == 8


def test_reclaim_leaves_fresh_claims_of_live_workers_alone(
    database: Database, data_dir: Path,
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=0, fill_in_blank=3)
    ids = [item.id for item in items_of(database, dataset)]
    with database.write() as session:
        session.execute(update(Item).where(Item.id == ids[0]).values(
            status=ItemStatus.GENERATING, claimed_by="elsewhere:1:x",
            claimed_at=utcnow()))
        session.execute(update(Item).where(Item.id == ids[1]).values(
            status=ItemStatus.GENERATING, claimed_by=dead_worker_id(),
            claimed_at=utcnow()))
    assert reclaim_stale_items(database) == 1
    statuses = [item.status for item in items_of(database, dataset)]
    assert statuses == [ItemStatus.GENERATING, ItemStatus.PENDING, ItemStatus.PENDING]
    assert reclaim_stale_items(database, stale_after=timedelta(0)) == 1


def test_a_failed_distractor_call_resumes_at_the_distractor_call(
    database: Database, data_dir: Path, host_factory: Callable[..., EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=3)
    broken = {"on": True}

    def script(seen: Seen, number: int) -> Reply:
        if seen.role == "distractors" and broken["on"]:
            return Reply(status=503)
        return default_reply(seen, number)

    with ScriptedEndpoint(script) as endpoint:
        config = Endpoint(base_url=endpoint.base_url, model="m")
        run_id = start_run(database, dataset, config,
                           settings(retry=RetryPolicy(max_retries=0),
                                    generation=GenerationSettings(attempt_limit=1)))
        host_factory()
        progress = wait_for(database, run_id, finished)
        assert progress.failed == 3 and endpoint.count("answer") == 3
        for item in items_of(database, dataset):
            assert item.last_error and item.last_error.startswith("distractors:")

        broken["on"] = False
        again = start_run(database, dataset, config, settings(), ItemSelection.FAILED)
        progress = wait_for(database, again, finished)
        assert progress.generated == 3 and progress.ledger_hits == 3
        assert endpoint.count("answer") == 3  # not paid again
        assert endpoint.count("distractors") == 3 + 3
    assert duplicate_successes_count(database) == 0


def duplicate_successes_count(database: Database) -> int:
    with database.read() as session:
        return len(duplicate_successes(session))


# ---------------------------------------------------------------- regeneration


def test_regenerating_distractors_keeps_the_answer_and_reuses_the_open_run(
    database: Database, data_dir: Path, simulator: SimulatorServer,
    host_factory: Callable[..., EngineHost],
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=3)
    endpoint = simulator_endpoint(simulator)
    first = start_run(database, dataset, endpoint, settings())
    host = host_factory()
    wait_for(database, first, finished)
    host.stop()
    items = items_of(database, dataset)
    with database.read() as session:
        old = session.get(Generation, items[0].current_generation_id)
        assert old is not None
    requests = simulator.stats.by_role.copy()

    run_a = request_regeneration(database, [items[0].id], scope=RegenerateScope.DISTRACTORS,
                                 reason="too easy", endpoint=endpoint, settings=settings())
    run_b = request_regeneration(database, [items[1].id], scope=RegenerateScope.WHOLE,
                                 reason=None, endpoint=endpoint, settings=settings())
    assert run_a != first and run_b == run_a
    assert run_progress(database, run_a).total == 2
    host_factory()
    progress = wait_for(database, run_b, finished)
    assert progress.status is RunStatus.COMPLETED
    after = items_of(database, dataset)
    assert after[0].regeneration == 1 and after[0].regenerate_scope is RegenerateScope.DISTRACTORS
    with database.read() as session:
        new = session.get(Generation, after[0].current_generation_id)
        assert new is not None
    assert new.id != old.id and new.answer == old.answer and new.explanation == old.explanation
    assert simulator.stats.by_role["answer"] - requests["answer"] in (1,)  # only item 1
    assert simulator.stats.by_role["distractors"] - requests["distractors"] == 2
    assert {i.status for i in after} == {ItemStatus.GENERATED}


def test_a_key_from_the_environment_is_read_again_when_the_run_resumes(
    database: Database, data_dir: Path, host_factory: Callable[..., EngineHost],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = seed_dataset(database, data_dir, multiple_choice=2)
    with SimulatorServer(SimulatorConfig(latency_ms=1, api_key="sk-env-key-5555")) as server:
        endpoint = Endpoint(base_url=server.base_url, model="m", api_key="sk-env-key-5555",
                            key_source="environment variable BENCH_VLM_KEY")
        run_id = start_run(database, dataset, endpoint, settings())
        host_factory()  # this process has no BENCH_VLM_KEY: the run cannot start
        progress = wait_for(database, run_id, lambda p: p.status is RunStatus.PAUSED, timeout=5)
        assert "environment variable BENCH_VLM_KEY" in (progress.message or "")
        assert server.stats.requests == 0

        monkeypatch.setenv("BENCH_VLM_KEY", "sk-env-key-5555")
        assert resume_run(database, run_id)
        progress = wait_for(database, run_id, finished)
        assert server.stats.by_outcome["401"] == 0
    assert progress.status is RunStatus.COMPLETED and progress.generated == 2
