"""The scale-out path: workers sharing one PostgreSQL database never claim the same item."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.engine import Database
from db.models import Generation, Item, ItemStatus, RunStatus
from vqa_engine.host import EngineHost
from vqa_engine.ledger import duplicate_successes
from vqa_engine.runs import RunSettings, run_progress, start_run
from vqa_engine.settings import Endpoint
from vqa_engine.simulator import SimulatorConfig, SimulatorServer
from vqa_engine.work_queue import claim_items
from vqa_engine.worker import WorkerSettings
from tests.generation_data import seed_dataset

pytestmark = pytest.mark.postgres


def test_a_claim_skips_items_locked_by_another_open_claim(postgres_database: Database, data_dir: Path) -> None:
    dataset = seed_dataset(postgres_database, data_dir, multiple_choice=0, fill_in_blank=10)
    run_id = start_run(postgres_database, dataset, Endpoint(base_url="http://127.0.0.1:9/v1"), RunSettings())
    first_claimed = threading.Event()
    second_done = threading.Event()
    claims: dict[str, list[int]] = {}

    def claim(worker: str, hold: bool) -> None:
        with postgres_database.write() as session:
            claims[worker] = [c.item_id for c in claim_items(session, run_id, worker, 4)]
            if hold:  # keep the transaction (and its row locks) open
                first_claimed.set()
                assert second_done.wait(10)

    holder = threading.Thread(target=claim, args=("worker-a", True))
    holder.start()
    assert first_claimed.wait(10)
    claim("worker-b", False)  # runs while worker-a's transaction is still open
    second_done.set()
    holder.join(10)

    assert len(claims["worker-a"]) == 4 and len(claims["worker-b"]) == 4
    assert set(claims["worker-a"]).isdisjoint(claims["worker-b"])
    with postgres_database.read() as session:
        owners = dict(session.execute(select(Item.id, Item.claimed_by)
                                      .where(Item.status == ItemStatus.GENERATING)).all())
    assert {owners[i] for i in claims["worker-a"]} == {"worker-a"}
    assert {owners[i] for i in claims["worker-b"]} == {"worker-b"}


def test_two_workers_share_a_run_without_generating_any_item_twice(
    postgres_database: Database, data_dir: Path,
) -> None:
    dataset = seed_dataset(postgres_database, data_dir, multiple_choice=20, fill_in_blank=10)
    fast = WorkerSettings(poll_interval=0.05)
    with SimulatorServer(SimulatorConfig(latency_ms=20, seed=1)) as simulator:
        run_id = start_run(postgres_database, dataset, Endpoint(base_url=simulator.base_url, model="m"),
                           RunSettings(concurrency=4, batch_size=3))
        hosts = [EngineHost(postgres_database, data=data_dir, settings=fast) for _ in range(2)]
        for host in hosts:
            host.start()
        try:
            deadline = time.monotonic() + 60
            while not run_progress(postgres_database, run_id).status.is_finished:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            for host in hosts:
                host.stop()
        assert simulator.stats.repeated() == {}
        assert simulator.stats.requests == 20 * 2 + 10
    progress = run_progress(postgres_database, run_id)
    assert progress.status is RunStatus.COMPLETED
    assert (progress.generated, progress.failed, progress.requests) == (30, 0, 50)
    with postgres_database.read() as session:
        per_item = session.execute(
            select(Generation.item_id, func.count()).where(Generation.ok.is_(True))
            .group_by(Generation.item_id)).all()
        assert len(per_item) == 30 and {count for _item, count in per_item} == {1}
        assert duplicate_successes(session) == {}
