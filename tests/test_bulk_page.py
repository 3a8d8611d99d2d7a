"""The bulk panel, history undo and balance panel, driven through AppTest on a real database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from curated_rows import add_dataset, add_image, add_item
from db.engine import Database
from db.models import Generation, Item, ItemStatus, ReviewBatch

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
FLAG = {"duplicate_options": "options B and C are the same"}


@pytest.fixture
def page_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("VQA_EMBEDDED_WORKER", "0")
    monkeypatch.chdir(ROOT)
    yield data_dir
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def dataset_id(page_env: Path, database: Database) -> int:
    with database.write() as session:
        dataset = add_dataset(session)
        image = add_image(session, page_env)
        for index in range(4):
            add_item(session, dataset, image, external_id=f"p{index}", answer=f"cat{index}",
                     options={"A": f"cat{index}", "B": "dog", "C": "cow"})
        add_item(session, dataset, image, external_id="flagged", flags=FLAG)
        add_item(session, dataset, image, external_id="pending", status=ItemStatus.PENDING)
        return dataset.id


def open_page(page: str, **params: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.query_params.update(params)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    assert "bulk_apply" not in keys(at) and "balance_apply" not in keys(at)  # lazy until open
    at.session_state["bulk_open"] = at.session_state["balance_open"] = True
    at.run()
    assert not at.exception, at.exception
    return at


def keys(at: AppTest) -> set[str]:
    return {b.key for b in at.button if b.key}


def click(at: AppTest, key: str) -> None:
    at.button(key=key).click()
    at.run()
    assert not at.exception, at.exception


def statuses(database: Database) -> list[ItemStatus]:
    with database.read() as session:
        return list(session.scalars(select(Item.status).order_by(Item.id)))


def shown_text(at: AppTest) -> str:
    return "\n".join(t.value for t in at.text)


def test_bulk_accept_previews_confirms_and_undoes(database: Database, dataset_id: int) -> None:
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana", status="generated")
    assert "Accept 4 of 5 items matching the filter; 1 skipped: 1 flagged." in shown_text(at)
    click(at, "bulk_apply")
    assert statuses(database)[:4] == [ItemStatus.GENERATED] * 4  # nothing before confirming
    assert any("Confirm: accept 4 of 5" in w.value for w in at.warning)
    click(at, "bulk_confirm")
    assert statuses(database) == [ItemStatus.ACCEPTED] * 4 + [ItemStatus.GENERATED,
                                                               ItemStatus.PENDING]
    with database.read() as session:
        batch = session.scalars(select(ReviewBatch)).one()
    assert batch.curator == "ana" and batch.item_count == 4
    click(at, f"bulk_undo_{batch.id}")
    assert statuses(database) == [ItemStatus.GENERATED] * 5 + [ItemStatus.PENDING]


def test_cancel_leaves_everything_as_it_was(database: Database, dataset_id: int) -> None:
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana")
    click(at, "bulk_apply")
    click(at, "bulk_cancel")
    assert not any("Confirm" in w.value for w in at.warning)
    assert statuses(database)[:4] == [ItemStatus.GENERATED] * 4


def test_history_undo_button_takes_a_decision_back(database: Database, dataset_id: int) -> None:
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana", status="generated")
    first = int(at.query_params["item"])
    click(at, "review_accept")
    at.query_params["item"] = str(first)
    at.run()
    undo_keys = [b.key for b in at.button if (b.key or "").startswith("history_undo_")]
    assert len(undo_keys) == 1 and not at.button(key=undo_keys[0]).disabled
    click(at, undo_keys[0])
    assert statuses(database)[0] is ItemStatus.GENERATED
    disabled = {b.key: b.disabled for b in at.button if (b.key or "").startswith("history_undo_")}
    assert disabled[undo_keys[0]] and len(disabled) == 2  # done once; the undo itself neither


def test_export_page_balances_after_a_preview_and_undoes(database: Database, dataset_id: int) -> None:
    at = open_page("pages/4_Export.py", dataset=str(dataset_id), curator="ana")
    at.radio(key="export_selection").set_value(at.radio(key="export_selection").options[1]).run()
    assert "3 options: now A=4 B=1 C=0" in shown_text(at)
    assert "2 of 5 item(s) would move." in shown_text(at)
    click(at, "balance_apply")
    click(at, "balance_confirm")
    with database.read() as session:
        letters = sorted(session.scalars(
            select(Generation.correct_letter).join(Item, Item.current_generation_id == Generation.id)
            .where(Item.status == ItemStatus.GENERATED)))
        batch = session.scalars(select(ReviewBatch)).one()
    assert letters == ["A", "A", "B", "B", "C"]
    click(at, f"bulk_undo_{batch.id}")
    with database.read() as session:
        assert session.get_one(ReviewBatch, batch.id).undone_by == "ana"


def test_a_change_between_preview_and_confirmation_asks_to_look_again(
    database: Database, dataset_id: int
) -> None:
    from vqa_engine import review

    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana", status="generated")
    click(at, "bulk_apply")
    with database.read() as session:
        item = session.scalars(select(Item).order_by(Item.id)).first()
    review.accept(database, item.id, curator="carl", expected_version=item.version)
    at.run()
    assert "bulk_confirm" not in keys(at)
    assert "Accept 3 of 4 items" in shown_text(at)  # the accepted one left the filter
    assert any("changed meanwhile" in i.value for i in at.info)
