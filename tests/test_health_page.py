"""The Dataset health page rendered through AppTest, with data and empty."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from db.engine import Database
from tests.curated_rows import add_dataset
from tests.test_health import build_known_dataset

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
PAGE = "pages/6_Health.py"


@pytest.fixture
def app_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("VQA_EMBEDDED_WORKER", "0")  # no engine host: nothing to generate here
    monkeypatch.chdir(ROOT)
    yield data_dir
    st.cache_resource.clear()
    st.cache_data.clear()


def open_health(**params: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(params)
    at.run()
    assert not at.exception, at.exception
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    found: list[str] = []

    def walk(node: Any) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            found.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(found)


def test_page_shows_letters_flags_curators_and_agreement(app_env: Path,
                                                          database: Database) -> None:
    known = build_known_dataset(database, app_env)
    at = open_health(dataset=str(known["dataset"]))
    shown = texts(at)
    assert at.title[0].value == "Dataset health"
    assert [w.value for w in at.warning] == [
        "p = 0.007: letters are not evenly spread — use Balance letters on the Export page "
        "(or `python -m vqa_engine balance`)"
    ]
    assert "p = 1.00: consistent with evenly spread letters" in shown
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Items"] == "16"
    assert metrics["Flagged"] == "4"
    assert metrics["Length bias"] == "18.2%"
    assert metrics["Agreement"] == "66.7%"
    assert metrics["Items agreed on"] == "2 of 3"
    assert metrics["Still need a review"] == "9"
    assert "No decisions yet." not in shown
    assert "Standing decisions per curator" in shown

    at.radio(key="health_coverage").set_value("every generated item (rejected too)").run()
    assert not at.exception, at.exception
    assert {m.label: m.value for m in at.metric}["Length bias"] == "25.0%"  # 3 of 12


def test_page_on_an_empty_dataset_says_so(app_env: Path, database: Database) -> None:
    with database.write() as session:
        dataset_id = add_dataset(session, "empty").id
    at = open_health(dataset=str(dataset_id))
    shown = texts(at)
    for message in ("No multiple-choice item in this selection.", "No flagged item",
                    "No run yet.", "No decisions yet.", "No item decided by two curators yet"):
        assert message in shown
    assert {m.label: m.value for m in at.metric}["Agreement"] == "–"
    assert not at.warning


def test_page_without_any_dataset_points_to_upload(app_env: Path, database: Database) -> None:
    at = open_health()
    assert "Upload a dataset first." in [i.value for i in at.info]
