"""The database layer: SQLite settings, write locking, optimistic locking, migrations, PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from db.engine import Database, database_url, open_database
from db.models import Dataset, Image, Item, ItemStatus, QuestionType


def add_item(database: Database, external_id: str = "q1") -> int:
    with database.write() as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == "d"))
        if dataset is None:
            dataset = Dataset(name="d")
            session.add(dataset)
        image = session.scalar(select(Image).where(Image.sha256 == "0" * 64))
        if image is None:
            image = Image(
                sha256="0" * 64, original_name="a.png", original_path="images/original/a.png",
                prepared_path="images/prepared/a.jpg", format="PNG", width=4, height=4,
                byte_size=10, prepared_width=4, prepared_height=4, prepared_byte_size=10,
                prepared_quality=85,
            )
            session.add(image)
        session.flush()
        item = Item(
            dataset_id=dataset.id, position=1, external_id=external_id, question="What?",
            question_type=QuestionType.FILL_IN_BLANK, image_id=image.id, image_ref="a.png",
        )
        session.add(item)
        session.flush()
        return item.id


def test_default_database_lives_in_the_data_dir(data_dir: Path) -> None:
    assert database_url() == f"sqlite:///{data_dir / 'vqa.db'}"


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_busy_timeout(database: Database) -> None:
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_schema_upgrade_creates_every_table_and_is_repeatable(data_dir: Path) -> None:
    url = f"sqlite:///{data_dir / 'again.db'}"
    open_database(url).close()
    database = open_database(url)
    names = set(inspect(database.engine).get_table_names())
    database.close()
    assert {"datasets", "images", "items", "runs", "generations", "ledger", "review_events",
            "endpoint_profiles", "prompt_templates", "alembic_version"} <= names


def test_concurrent_writers_wait_instead_of_failing_with_database_locked(
    database: Database,
) -> None:
    item_id = add_item(database)
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(20):
                with database.write() as session:
                    item = session.get_one(Item, item_id)
                    item.attempts += 1
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with database.read() as session:
        assert session.get_one(Item, item_id).attempts == 80


def test_a_stale_item_update_is_refused(database: Database) -> None:
    item_id = add_item(database)
    with database.read() as session:
        seen = session.get_one(Item, item_id)
        session.expunge(seen)
    with database.write() as session:
        session.get_one(Item, item_id).status = ItemStatus.GENERATED
    with pytest.raises(StaleDataError):
        with database.write() as session:
            stale = session.merge(seen, load=False)
            stale.status = ItemStatus.REJECTED
    with database.read() as session:
        item = session.get_one(Item, item_id)
        assert (item.status, item.version) == (ItemStatus.GENERATED, 2)


def test_external_ids_are_unique_within_a_dataset(database: Database) -> None:
    add_item(database, "same")
    with pytest.raises(IntegrityError):
        add_item(database, "same")
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(Item)) == 1


def test_a_failed_write_leaves_nothing_behind(database: Database) -> None:
    with pytest.raises(RuntimeError):
        with database.write() as session:
            session.add(Dataset(name="half"))
            session.flush()
            raise RuntimeError("boom")
    with database.read() as session:
        assert session.scalar(select(Dataset).where(Dataset.name == "half")) is None


@pytest.mark.postgres
def test_the_same_schema_and_code_work_on_postgresql(postgres_database: Database) -> None:
    item_id = add_item(postgres_database)
    with postgres_database.write() as session:
        session.get_one(Item, item_id).status = ItemStatus.GENERATED
    with postgres_database.read() as session:
        item = session.get_one(Item, item_id)
        assert (item.status, item.version) == (ItemStatus.GENERATED, 2)
        assert "items" in inspect(session.connection()).get_table_names()
