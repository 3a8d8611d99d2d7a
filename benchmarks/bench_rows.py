"""Rows for benchmarks on large datasets, written with bulk Core inserts.

A benchmark decides what its items, generations and decisions look like; this module makes
the image, dataset and runs they hang on, inserts them a chunk at a time, and points every
generated item at the generation that shares its id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, update

from db.engine import Database
from db.models import (
    Dataset,
    Generation,
    Image,
    Item,
    ItemStatus,
    QuestionType,
    ReviewEvent,
    Run,
    RunStatus,
)

CHUNK = 5000
Rows = list[dict[str, Any]]


def bench_dataset(
    database: Database, *, run_models: Sequence[str], run_items: int, requests: int,
    reviews_required: int = 1,
) -> tuple[int, int, list[int]]:
    """(image id, dataset id, run ids): one shared placeholder image, completed runs."""
    with database.write() as session:
        image = Image(sha256="0" * 64, original_name="bench.jpg", original_path="bench.jpg",
                      prepared_path="bench.jpg", format="JPEG", width=8, height=8, byte_size=1,
                      prepared_width=8, prepared_height=8, prepared_byte_size=1,
                      prepared_quality=85)
        dataset = Dataset(name="bench", default_question_type=QuestionType.MULTIPLE_CHOICE,
                          reviews_required=reviews_required)
        session.add_all([image, dataset])
        session.flush()
        runs = [Run(dataset_id=dataset.id, status=RunStatus.COMPLETED, config={"model": model},
                    total_items=run_items, generated_items=run_items, requests=requests)
                for model in run_models]
        session.add_all(runs)
        session.flush()
        return image.id, dataset.id, [run.id for run in runs]


def insert_rows(database: Database, items: Rows, generations: Rows, events: Rows) -> None:
    """One chunk of items with their generations and review events, in one transaction."""
    with database.write() as session:
        session.execute(insert(Item), items)
        if generations:
            session.execute(insert(Generation), generations)
        if events:
            session.execute(insert(ReviewEvent), events)


def link_generations(database: Database, dataset_id: int) -> None:
    """Every item that has a generation points at it (generation ids equal item ids)."""
    with database.write() as session:
        session.execute(
            update(Item)
            .where(Item.dataset_id == dataset_id, Item.status != ItemStatus.PENDING)
            .values(current_generation_id=Item.id),
            execution_options={"synchronize_session": False},
        )
