"""Every dashboard page driven through Streamlit's AppTest, on a real database and simulator.

Each test gets its own data dir and SQLite file (VQA_DATA_DIR), the SIMULATED endpoint
(VQA_BASE_URL), and the app's own cached resources: the engine host the pages start
generates for real. The cached resources are released after each test, which stops the
host and closes the database.

AppTest cannot select rows of an `st.dataframe` (the browser test does that); everything
else a curator does is done here through the widgets themselves.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from sqlalchemy import select, update
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from db.engine import Database
from db.models import Generation, Item, ItemStatus, ReviewEvent, Run, RunStatus
from db.queries import status_counts
from vqa_engine.ingest import ingest_dataset
from vqa_engine.profiles import SIMULATOR_PROFILE, list_profiles
from vqa_engine.prompt_store import current_prompts, default_text
from vqa_engine.runs import ItemSelection, RunSettings, run_progress, start_run
from vqa_engine.settings import resolve_endpoint
from vqa_engine.simulator import SIMULATED_MODEL, SimulatorServer

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
DEMO = ROOT / "examples" / "demo"
SECRET = "sk-dashboardtest-0123456789-9f3a"


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture
def app_env(data_dir: Path, simulator: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("VQA_BASE_URL", simulator.base_url)
    monkeypatch.setenv("VQA_MODEL", SIMULATED_MODEL)
    monkeypatch.chdir(ROOT)
    yield data_dir
    st.cache_resource.clear()  # stops this test's engine host and closes its database
    st.cache_data.clear()


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages without an embedded engine host, so a test alone changes the run rows."""
    monkeypatch.setenv("VQA_EMBEDDED_WORKER", "0")


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """What each download button would serve, by media file id."""
    served: dict[str, bytes] = {}

    class Recording(MemoryMediaFileStorage):
        def load_and_get_id(self, path_or_data: Any, mimetype: str, kind: Any,
                            filename: str | None = None) -> str:
            file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
            served[file_id] = self.get_file(file_id).content
            return file_id

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", Recording)
    return served


def open_page(page: str | None = None, **params: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(params)
    at.run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, at.exception
    return at


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def texts(at: AppTest) -> str:
    """Every string the page shows (protos of all elements, sidebar included)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            found.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(found)


def seed_demo(database: Database, data_dir: Path, name: str = "demo") -> int:
    summary = ingest_dataset(database, DEMO / "questions.json", [DEMO / "images.zip"], name,
                             data=data_dir, workers=1)
    return summary.dataset_id


def generate_all(database: Database, dataset_id: int) -> int:
    """Run the dataset through the page's engine host (a page must have been opened)."""
    run_id = start_run(database, dataset_id, resolve_endpoint(), RunSettings(concurrency=8),
                       ItemSelection.PENDING)
    wait_for(lambda: run_progress(database, run_id).status is RunStatus.COMPLETED)
    with database.read() as session:
        counts = status_counts(session, dataset_id)
    assert counts[ItemStatus.GENERATED] == sum(counts.values()), counts
    return run_id


def item_row(database: Database, item_id: int) -> Item:
    with database.read() as session:
        return session.get_one(Item, item_id)


def generated_dataset(database: Database, data_dir: Path) -> tuple[int, AppTest]:
    dataset_id = seed_demo(database, data_dir)
    at = open_page()  # starts the engine host
    generate_all(database, dataset_id)
    return dataset_id, at


def first_multiple_choice(database: Database, dataset_id: int) -> Item:
    with database.read() as session:
        return session.scalars(
            select(Item).where(Item.dataset_id == dataset_id,
                               Item.question_type == "multiple_choice").order_by(Item.id)
        ).first()


# ------------------------------------------------------------------ home


def test_home_without_data_points_to_upload(app_env: Path) -> None:
    at = open_page()
    assert "No dataset yet" in at.info[0].value
    assert any("Upload" in link.proto.label for link in at.get("page_link"))


def test_home_counts_statuses_and_lists_what_needs_attention(
    app_env: Path, database: Database
) -> None:
    dataset_id, _ = generated_dataset(database, app_env)
    at = open_page()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Items"] == "12" and metrics["To review"] == "12", metrics
    labels = [link.proto.label for link in at.get("page_link")]
    assert any("12 item(s) of demo wait for review" in label for label in labels)
    assert at.dataframe[0].value["dataset"].tolist() == ["demo"]
    assert at.dataframe[1].value["status"].tolist() == ["completed"]
    assert dataset_id


# ------------------------------------------------------------------ upload


def test_upload_through_file_uploader_creates_the_dataset_and_clears_the_stage(
    app_env: Path, database: Database
) -> None:
    at = open_page("pages/1_Upload.py")
    at.file_uploader[0].set_value(("questions.json", (DEMO / "questions.json").read_bytes(),
                                   "application/json"))
    at.file_uploader[1].set_value([("images.zip", (DEMO / "images.zip").read_bytes(),
                                    "application/zip")])
    rerun(at)
    assert "Question file: questions.json" in texts(at)
    preview = at.dataframe[0].value
    assert len(preview) == 12 and preview["id"].iloc[0] == "q01"
    at.text_input(key="upload_name").set_value("shapes and signs")
    at.button(key="upload_import").click()
    rerun(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Items"] == "12" and metrics["Images stored"] == "10"
    assert at.query_params["dataset"] == "1"
    with database.read() as session:
        assert session.scalar(select(Item.dataset_id).limit(1)) == 1
    assert not any((app_env / "uploads").iterdir())  # the stage is gone after the import


def test_upload_lists_every_bad_row_in_a_table_and_stores_nothing(
    app_env: Path, database: Database
) -> None:
    rows = [
        {"id": "1", "question": "", "question_type": "multiple_choice", "image": "a.png"},
        {"id": "2", "question": "Colour?", "question_type": "essay", "image": "a.png"},
        {"id": "3", "question": "Shape?", "question_type": "multiple_choice"},
    ]
    at = open_page("pages/1_Upload.py")
    at.file_uploader[0].set_value(("bad.json", json.dumps(rows).encode(), "application/json"))
    rerun(at)
    problems = at.dataframe[-1].value
    assert sorted(problems["row"].dropna().astype(int).unique().tolist()) == [1, 2, 3]
    assert "3 problem(s)" in at.error[0].value
    assert at.button(key="upload_import").disabled
    with database.read() as session:
        assert session.scalar(select(Item.id).limit(1)) is None


def test_import_refusal_names_the_row_whose_image_is_missing(
    app_env: Path, database: Database
) -> None:
    rows = [{"id": "x1", "question": "What is it?", "question_type": "fill_in_blank",
             "image": "not-uploaded.png"}]
    at = open_page("pages/1_Upload.py")
    at.file_uploader[0].set_value(("q.json", json.dumps(rows).encode(), "application/json"))
    at.file_uploader[1].set_value([("shapes.png", (DEMO / "images" / "shapes.png").read_bytes(),
                                    "image/png")])
    rerun(at)
    at.button(key="upload_import").click()
    rerun(at)
    problems = at.dataframe[-1].value
    assert problems["row"].tolist() == [1]
    assert "not-uploaded.png" in problems["reason"].iloc[0] or problems["field"].iloc[0] == "image"
    assert "nothing was stored" in at.error[0].value
    with database.read() as session:
        assert session.scalar(select(Item.id).limit(1)) is None


# ------------------------------------------------------------------ runs


def test_run_started_on_the_runs_page_is_generated_and_shown_live(
    app_env: Path, database: Database
) -> None:
    dataset_id = seed_demo(database, app_env)
    at = open_page("pages/2_Runs.py", dataset=str(dataset_id))
    estimate = next(i.value for i in at.info if i.value.startswith("Estimate"))
    assert "12 item(s) (7 multiple choice, 5 fill-in-blank)" in estimate
    assert "19 requests" in estimate
    at.button(key="run_start").click()
    rerun(at)
    assert at.query_params["run"] == "1"
    assert "Run 1 started" in at.toast[0].value

    def shows_completed() -> bool:
        rerun(at)
        return any("Run 1 · completed" in s.value for s in at.subheader)

    wait_for(shows_completed)
    bar = at.get("progress")[0]
    assert bar.value == 100 and "12 of 12 items" in bar.proto.text
    history = at.dataframe(key="run_history").value
    assert history["status"].tolist() == ["completed"] and history["generated"].tolist() == [12]


def test_runs_page_shows_the_progress_written_to_the_run_row(
    app_env: Path, database: Database, no_worker: None
) -> None:
    dataset_id = seed_demo(database, app_env)
    run_id = start_run(database, dataset_id, resolve_endpoint(), RunSettings(),
                       ItemSelection.PENDING)
    at = open_page("pages/2_Runs.py", dataset=str(dataset_id))
    assert "0 of 12 items" in at.get("progress")[0].proto.text
    with database.write() as session:
        session.execute(update(Run).where(Run.id == run_id).values(
            status=RunStatus.RUNNING, generated_items=5, failed_items=1,
            errors_by_type={"timeout": 1}))
    rerun(at)
    bar = at.get("progress")[0]
    assert "6 of 12 items (5 generated, 1 failed" in bar.proto.text
    assert bar.value == 50
    assert any("Run 1 · running" in s.value for s in at.subheader)


def test_pause_resume_and_cancel_buttons_change_the_run(
    app_env: Path, database: Database, no_worker: None
) -> None:
    dataset_id = seed_demo(database, app_env)
    run_id = start_run(database, dataset_id, resolve_endpoint(), RunSettings(),
                       ItemSelection.PENDING)
    at = open_page("pages/2_Runs.py", dataset=str(dataset_id))
    at.button(key="run_pause").click()
    rerun(at)
    assert run_progress(database, run_id).status is RunStatus.PAUSED
    at.button(key="run_resume").click()
    rerun(at)
    assert run_progress(database, run_id).status is RunStatus.QUEUED
    at.button(key="run_cancel").click()
    rerun(at)
    assert run_progress(database, run_id).status is RunStatus.CANCELLED
    assert any("Run 1 · cancelled" in s.value for s in at.subheader)


def test_test_connection_reports_latency_or_the_exact_problem(
    app_env: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset_id = seed_demo(database, app_env)
    at = open_page("pages/2_Runs.py", dataset=str(dataset_id))
    at.button(key="run_test").click()
    rerun(at)
    assert "answered in" in at.success[0].value and SIMULATED_MODEL in at.success[0].value

    at.selectbox(key="run_endpoint_choice").set_value("custom")
    rerun(at)
    at.text_input(key="run_custom_url").set_value("http://127.0.0.1:9/v1")
    at.text_input(key="run_custom_key").set_value(SECRET)
    rerun(at)
    at.button(key="run_test").click()
    rerun(at)
    message = at.error[0].value
    assert "127.0.0.1:9" in message and "sk-...9f3a" in message
    assert SECRET not in texts(at)


def test_a_run_form_key_lost_by_a_restart_is_asked_for_again(
    app_env: Path, database: Database, simulator: SimulatorServer
) -> None:
    from db.engine import database_url
    from ui.resources import engine_host
    from vqa_engine.runs import pause_run

    simulator.reconfigure(latency_ms=300.0, jitter_ms=0.0)
    dataset_id = seed_demo(database, app_env)
    at = open_page("pages/2_Runs.py", dataset=str(dataset_id))
    at.selectbox(key="run_endpoint_choice").set_value("custom")
    rerun(at)
    at.text_input(key="run_custom_url").set_value(simulator.base_url)
    at.text_input(key="run_custom_key").set_value(SECRET)
    rerun(at)
    at.button(key="run_start").click()
    rerun(at)
    host = engine_host(database_url())
    assert host is not None and host.has_key(1)
    pause_run(database, 1)
    host.forget_key(1)  # what a restart of the server does to a key typed into a form
    rerun(at)
    assert any("no longer has it" in w.value for w in at.warning)
    at.text_input(key="run_key_1").set_value(SECRET)
    rerun(at)
    at.button(key="run_resume_with_key").click()
    rerun(at)
    assert host.has_key(1)
    simulator.reconfigure(latency_ms=2.5, jitter_ms=2.5)
    wait_for(lambda: run_progress(database, 1).status is RunStatus.COMPLETED)
    assert SECRET not in texts(at)
    database.close()
    for path in app_env.glob("vqa.db*"):
        assert SECRET.encode() not in path.read_bytes()


# ------------------------------------------------------------------ review


def test_accept_reject_and_reshuffle_record_the_curator_and_move_on(
    app_env: Path, database: Database
) -> None:
    dataset_id, _ = generated_dataset(database, app_env)
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana")
    first = int(at.query_params["item"])
    at.button(key="review_accept").click()
    rerun(at)
    assert item_row(database, first).status is ItemStatus.ACCEPTED
    second = int(at.query_params["item"])
    assert second > first  # moved on to the next item to review
    at.button(key="review_reject").click()
    rerun(at)
    assert item_row(database, second).status is ItemStatus.REJECTED
    third = int(at.query_params["item"])
    at.button(key="review_next").click()
    rerun(at)
    assert int(at.query_params["item"]) > third
    at.button(key="review_previous").click()
    rerun(at)
    assert int(at.query_params["item"]) == third

    target = first_multiple_choice(database, dataset_id)
    with database.read() as session:
        before = session.get_one(Generation, target.current_generation_id)
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana", item=str(target.id))
    at.button(key="review_reshuffle").click()
    rerun(at)
    after_item = item_row(database, target.id)
    with database.read() as session:
        after = session.get_one(Generation, after_item.current_generation_id)
        curators = set(session.scalars(select(ReviewEvent.curator)))
    assert after.id != before.id
    assert sorted(after.options.values()) == sorted(before.options.values())
    assert after.options[after.correct_letter] == before.options[before.correct_letter]
    assert curators == {"ana"}


def test_actions_need_a_curator_name(app_env: Path, database: Database) -> None:
    dataset_id, _ = generated_dataset(database, app_env)
    at = open_page("pages/3_Review.py", dataset=str(dataset_id))
    assert at.button(key="review_accept").disabled
    assert "Curator" in at.warning[0].value
    at.sidebar.text_input[0].input("bo")
    rerun(at)
    assert not at.button(key="review_accept").disabled
    assert at.query_params["curator"] == "bo"


def test_every_action_has_a_keyboard_shortcut(app_env: Path, database: Database) -> None:
    dataset_id, _ = generated_dataset(database, app_env)
    item = first_multiple_choice(database, dataset_id)
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana", item=str(item.id))
    shortcuts = {key: at.button(key=key).proto.shortcut.upper() for key in (
        "review_accept", "review_reject", "review_reshuffle", "review_edit",
        "review_regenerate", "review_next", "review_previous")}
    assert shortcuts == {"review_accept": "A", "review_reject": "X", "review_reshuffle": "S",
                         "review_edit": "E", "review_regenerate": "G", "review_next": "N",
                         "review_previous": "P"}


def test_edit_dialog_saves_a_valid_edit_and_refuses_duplicate_options(
    app_env: Path, database: Database
) -> None:
    dataset_id, _ = generated_dataset(database, app_env)
    item = first_multiple_choice(database, dataset_id)
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana", item=str(item.id))
    at.button(key="review_edit").click()
    rerun(at)
    suffix = f"{item.id}_{item.version}"
    at.text_input(key=f"edit_answer_{suffix}").set_value("red circle")
    at.text_area(key=f"edit_distractors_{suffix}").set_value("blue square\nRed Circle")
    at.button(key="edit_save").click()
    rerun(at)
    assert "same" in at.error[0].value  # shown inside the still-open dialog
    assert item_row(database, item.id).version == item.version

    at.text_area(key=f"edit_distractors_{suffix}").set_value("blue square\ngreen triangle")
    at.radio(key=f"edit_letter_{suffix}").set_value("B")
    at.button(key="edit_save").click()
    rerun(at)
    edited = item_row(database, item.id)
    with database.read() as session:
        generation = session.get_one(Generation, edited.current_generation_id)
    assert generation.source.value == "edit"
    assert generation.correct_letter == "B" and generation.options["B"] == "red circle"
    assert "edited" in at.toast[0].value
    assert "edit_save" not in [b.key for b in at.button]  # the dialog closed


def test_regenerate_with_a_reason_reaches_the_model_and_the_card_updates(
    app_env: Path, database: Database, simulator: SimulatorServer
) -> None:
    dataset_id, _ = generated_dataset(database, app_env)
    item = first_multiple_choice(database, dataset_id)
    old_generation = item.current_generation_id
    prompts: list[str] = []

    def responder(role: str, prompt: str) -> str:
        prompts.append(prompt)
        if role == "distractors":
            return json.dumps({"options": ["a blue square", "a green triangle", "a yellow star"]})
        return json.dumps({"answer": "a red circle", "explanation": "It is on the left."})

    simulator.reconfigure(responder=responder)
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana", item=str(item.id))
    at.text_input(key=f"review_reason_{item.id}").set_value("the answer names a colour, not a shape")
    at.button(key="review_regenerate").click()
    rerun(at)
    assert "new item requested" in at.toast[0].value
    wait_for(lambda: item_row(database, item.id).status is ItemStatus.GENERATED)
    rerun(at)
    fresh = item_row(database, item.id)
    assert fresh.current_generation_id != old_generation and fresh.regeneration == 1
    assert any("the answer names a colour, not a shape" in p for p in prompts)
    assert "a red circle" in texts(at)
    with database.read() as session:
        event = session.scalars(select(ReviewEvent).where(ReviewEvent.item_id == item.id)).one()
    assert event.reason == "the answer names a colour, not a shape" and event.curator == "ana"


def test_an_action_on_a_stale_card_is_refused_and_the_fresh_item_shown(
    app_env: Path, database: Database
) -> None:
    from vqa_engine.review import accept

    dataset_id, _ = generated_dataset(database, app_env)
    item = first_multiple_choice(database, dataset_id)
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana", item=str(item.id))
    accept(database, item.id, curator="bo", expected_version=item.version)  # another tab
    at.button(key="review_reject").click()
    rerun(at)
    assert "changed by bo" in at.error[0].value
    assert item_row(database, item.id).status is ItemStatus.ACCEPTED
    assert at.query_params["item"] == str(item.id)
    assert "accepted" in texts(at)  # the card now shows the fresh state


def test_model_output_is_shown_as_text_never_as_markup(
    app_env: Path, database: Database, simulator: SimulatorServer
) -> None:
    hostile = "<img src=x onerror=alert(1)> **bold** [link](http://example.test)"

    def responder(role: str, prompt: str) -> str:
        if role == "distractors":
            return json.dumps({"options": ["<script>alert(2)</script>", "# heading", "_under_"]})
        return json.dumps({"answer": hostile, "explanation": hostile + " explained"})

    simulator.reconfigure(responder=responder)
    dataset_id, _ = generated_dataset(database, app_env)
    item = first_multiple_choice(database, dataset_id)
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana", item=str(item.id))
    shown_as_text = [t.value for t in at.text]
    assert "<script>alert(2)</script>" in shown_as_text and "# heading" in shown_as_text
    assert hostile + " explained" in shown_as_text
    markdown_like = [*at.markdown, *at.success, *at.caption, *at.info, *at.warning, *at.error]
    assert markdown_like
    for element in markdown_like:  # every "<" and "*" of model text is escaped
        assert not re.search(r"(?<!\\)<", element.value), element.value
        assert "**bold**" not in element.value
    correct = at.success[0].value
    assert "\\<img src=x onerror=alert\\(1\\)\\>" in correct  # escaped, shown literally


def test_deep_link_opens_an_item_that_is_not_generated_yet(
    app_env: Path, database: Database
) -> None:
    dataset_id = seed_demo(database, app_env)
    seed_demo(database, app_env, name="other")  # the link must switch datasets
    at = open_page("pages/3_Review.py", item="3")
    assert at.sidebar.selectbox[0].value == dataset_id
    assert "Not generated yet" in at.info[0].value
    assert "How many apples" in texts(at)
    assert len(at.image) >= 1
    assert at.button(key="review_accept").disabled


def test_filters_and_the_table_view(app_env: Path, database: Database) -> None:
    dataset_id, _ = generated_dataset(database, app_env)
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), curator="ana")
    at.multiselect(key="review_status").set_value([ItemStatus.FAILED])
    rerun(at)
    assert "No item matches the filter" in at.info[0].value
    at.multiselect(key="review_status").set_value([])
    at.text_input(key="review_text").set_value("traffic light")
    rerun(at)
    assert "1 item(s) match the filter" in texts(at)
    at.segmented_control(key="review_view").set_value("Table")
    rerun(at)
    table = at.dataframe[0].value
    assert table["id"].tolist() == ["q12"]
    at.text_input(key="review_text").set_value("")
    rerun(at)
    assert len(at.dataframe[0].value) == 12


def test_status_link_from_home_sets_the_review_filter(app_env: Path, database: Database) -> None:
    dataset_id, _ = generated_dataset(database, app_env)
    at = open_page("pages/3_Review.py", dataset=str(dataset_id), status="accepted")
    assert at.multiselect(key="review_status").value == [ItemStatus.ACCEPTED]


# ------------------------------------------------------------------ export


def test_export_shows_counts_and_letters_and_downloads_the_json(
    app_env: Path, database: Database, downloads: dict[str, bytes]
) -> None:
    from vqa_engine.review import accept

    dataset_id, _ = generated_dataset(database, app_env)
    with database.read() as session:
        items = list(session.scalars(select(Item).where(Item.dataset_id == dataset_id)))
    for item in items[:5]:
        accept(database, item.id, curator="ana", expected_version=item.version)
    at = open_page("pages/4_Export.py", dataset=str(dataset_id))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Items to export"] == "5"
    at.button(key="export_run").click()
    rerun(at)
    button = at.download_button(key="export_download")
    assert button.proto.label.startswith("Download demo.json")
    served = json.loads(downloads[button.proto.url.rsplit("/", 1)[-1].split(".")[0]])
    assert [record["id"] for record in served] == [item.external_id for item in items[:5]]
    assert all(record["review"]["status"] == "accepted" for record in served)
    assert list((app_env / "exports").glob("demo-*.json"))


def test_export_with_nothing_selected_says_why(app_env: Path, database: Database) -> None:
    dataset_id = seed_demo(database, app_env)
    at = open_page("pages/4_Export.py", dataset=str(dataset_id))
    assert at.button(key="export_run").disabled
    assert "Nothing to export" in texts(at)


# ------------------------------------------------------------------ settings


def test_profile_is_saved_with_the_key_location_and_shown_masked(
    app_env: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEAM_VLM_KEY", SECRET)
    at = open_page("pages/5_Settings.py")
    form_inputs = [t for t in at.text_input if t.form_id]
    name, base_url, model, key_name = form_inputs
    name.set_value("team vllm")
    base_url.set_value("http://127.0.0.1:8000/v1")
    model.set_value("qwen2.5-vl-7b-instruct")
    next(r for r in at.radio if r.label == "Key from").set_value("env")
    key_name.set_value("TEAM_VLM_KEY")
    at.form_submit_button[0].click()
    rerun(at)
    [profile] = list_profiles(database)
    assert profile.key_env == "TEAM_VLM_KEY"
    table = at.dataframe[0].value
    assert table["key"].tolist() == ["sk-...9f3a"]
    assert SECRET not in texts(at)


def test_prompt_template_is_edited_versioned_and_reset(app_env: Path, database: Database) -> None:
    at = open_page("pages/5_Settings.py")
    name = at.selectbox(key="settings_template").value
    area = next(a for a in at.text_area if a.key and a.key.startswith("settings_template_text"))
    area.set_value(default_text(name) + "\nAnswer in at most three words.\n")
    rerun(at)
    at.button(key="settings_template_save").click()
    rerun(at)
    assert getattr(current_prompts(database), name).endswith("three words.\n")
    at.button(key="settings_template_reset").click()
    rerun(at)
    assert getattr(current_prompts(database), name) == default_text(name)


def test_simulator_started_from_settings_is_labelled_and_offered_to_runs(
    app_env: Path, database: Database
) -> None:
    seed_demo(database, app_env)
    at = open_page("pages/5_Settings.py")
    at.button(key="settings_sim_start").click()
    rerun(at)
    [profile] = list_profiles(database)
    assert profile.name == SIMULATOR_PROFILE and profile.simulated
    assert "SIMULATED endpoint running" in at.sidebar.warning[0].value
    at.switch_page("pages/2_Runs.py")
    rerun(at)
    choice = f"profile:{profile.id}"
    at.selectbox(key="run_endpoint_choice").set_value(choice)
    rerun(at)
    assert any("SIMULATED" in w.value for w in at.warning)
    at.button(key="run_test").click()
    rerun(at)
    assert "answered in" in at.success[0].value
    at.switch_page("pages/5_Settings.py")
    rerun(at)
    at.button(key="settings_sim_stop").click()
    rerun(at)
    assert not at.sidebar.warning


# ------------------------------------------------------------------ secrets


def test_no_page_ever_shows_the_api_key(
    app_env: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VQA_API_KEY", SECRET)
    dataset_id, _ = generated_dataset(database, app_env)
    from ui.bootstrap import PAGES

    for page in [None, *(path for path, _, _ in PAGES if path != "app.py")]:
        at = open_page(page, dataset=str(dataset_id), curator="ana")
        shown = texts(at)
        assert SECRET not in shown
    assert "sk-...9f3a" in texts(open_page("pages/2_Runs.py", dataset=str(dataset_id)))
