"""The whole curator workflow in a real headless Chromium against `streamlit run`.

Upload the example dataset, launch a run against the SIMULATED endpoint, reload the page
mid-run and see the run carry on, accept an item with the keyboard, regenerate one with a
reason (the reason reaches the model's prompt), pick an item from the table, and export
JSON through the download button. The database is read directly to check each step.

Chromium is Debian's package (`playwright install` cannot download browsers here); the test
is skipped, saying so, only when no `chromium` binary is on the PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.engine import Database, open_database
from db.models import Item, ItemStatus, ReviewEvent, Run, RunStatus
from vqa_engine.simulator import SIMULATED_MODEL, SimulatorConfig, SimulatorServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("VQA_SCREENSHOT_DIR", "/tmp"))
REASON = "the answer should name the shape, not its colour"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _settle(page: Any) -> None:
    """Wait for the script run a widget just triggered to finish."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stApp]')"
        "?.getAttribute('data-test-script-state') === 'notRunning'"
    )


@pytest.fixture
def prompts_seen() -> list[str]:
    return []


@pytest.fixture
def slow_simulator(prompts_seen: list[str]) -> Iterator[SimulatorServer]:
    """Slow enough (0.6 s a request) that a reload lands in the middle of the run."""

    def responder(role: str, prompt: str) -> str:
        prompts_seen.append(prompt)
        if role == "distractors":
            return json.dumps({"options": ["a blue square", "a green triangle", "a star"]})
        return json.dumps({"answer": "a red circle", "explanation": "It is on the left."})

    config = SimulatorConfig(latency_ms=600, responder=responder, seed=1)
    with SimulatorServer(config) as server:
        yield server


@pytest.fixture
def app_server(tmp_path: Path, slow_simulator: SimulatorServer) -> Iterator[tuple[str, Path]]:
    data = tmp_path / "data"
    data.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VQA_")}
    env.update(VQA_DATA_DIR=str(data), VQA_BASE_URL=slow_simulator.base_url,
               VQA_MODEL=SIMULATED_MODEL)
    log = (tmp_path / "streamlit.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _healthy(url) or process.poll() is not None, 30, "streamlit to start")
        assert process.poll() is None, (tmp_path / "streamlit.log").read_text()
        yield url, data
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` binary on PATH (Debian package "
                    "`chromium`); playwright cannot download browsers here")
def test_curator_workflow_in_a_real_browser(
    app_server: tuple[str, Path], prompts_seen: list[str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, data = app_server
    database: Database | None = None

    def db() -> Database:
        nonlocal database
        if database is None:
            database = open_database(f"sqlite:///{data / 'vqa.db'}", upgrade=False)
        return database

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page.set_default_timeout(20_000)

            # Upload: question file and a zip of images, then import.
            page.goto(f"{url}/Upload")
            page.locator("input[type=file]").nth(0).set_input_files(DEMO / "questions.json")
            expect(page.get_by_text("Question file: questions.json")).to_be_visible()
            _settle(page)
            page.locator("input[type=file]").nth(1).set_input_files(DEMO / "images.zip")
            expect(page.get_by_text("1 zip archive(s)")).to_be_visible()
            expect(page.get_by_text("12 question(s)")).to_be_visible()
            page.get_by_role("button", name="Import").click()
            expect(page.get_by_text("Dataset questions created")).to_be_visible(timeout=60_000)

            # Runs: launch with a low concurrency so the run lasts a few seconds.
            page.get_by_role("link", name="Start a run").click()
            expect(page.get_by_text("Estimate: 12 item(s)")).to_be_visible()
            concurrency = page.get_by_role("spinbutton", name="Concurrency")
            concurrency.fill("2")
            concurrency.press("Enter")
            page.get_by_role("button", name="Start run").click()
            expect(page.get_by_text("Run 1 · running")).to_be_visible()
            _wait_until(lambda: _run(db()).generated_items >= 2, 30, "the run to get going")
            done_before = _run(db()).generated_items
            assert done_before < 12
            page.reload()
            expect(page.get_by_text("Run 1 · running")).to_be_visible()
            page.screenshot(path=SCREENSHOTS / "vqa-e2e-run-after-reload.png", full_page=True)
            assert "run=1" in page.url
            expect(page.get_by_text("Run 1 · completed")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("12 of 12 items")).to_be_visible()

            # Review: name the curator, accept the first item with the keyboard.
            page.goto(f"{url}/Review?dataset=1")
            curator = page.get_by_label("Curator", exact=True)
            curator.fill("ana")
            curator.press("Enter")
            accept = page.locator(".st-key-review_accept button")
            expect(page.locator(".st-key-review_accept button:not([disabled])")).to_have_count(1)
            expect(accept).to_have_count(1)  # the rerun's old, disabled copy is gone
            expect(page).to_have_url(re.compile(r"item=1(&|$)"))
            page.locator("h1").click()  # focus leaves the text field
            page.keyboard.press("a")
            _wait_until(lambda: _item(db(), 1).status is ItemStatus.ACCEPTED, 15, "accept")
            expect(page).to_have_url(re.compile(r"item=2(&|$)"))
            page.screenshot(path=SCREENSHOTS / "vqa-e2e-review.png", full_page=True)

            # Regenerate item 2 with a reason; the card updates when the engine is done.
            before = _item(db(), 2)
            page.get_by_label("Reason for regenerating").fill(REASON)
            page.get_by_role("button", name="Regenerate").click()
            _wait_until(lambda: _item(db(), 2).regeneration == 1, 15, "the regeneration request")
            _wait_until(lambda: _item(db(), 2).status is ItemStatus.GENERATED, 30,
                        "the new generation")
            after = _item(db(), 2)
            assert after.current_generation_id != before.current_generation_id
            assert any(REASON in prompt for prompt in prompts_seen)
            expect(page.get_by_text("Waiting for the engine")).to_have_count(0, timeout=15_000)
            with db().read() as session:
                event = session.scalars(
                    select(ReviewEvent).where(ReviewEvent.item_id == 2)).one()
            assert (event.curator, event.reason) == ("ana", REASON)

            # Table view: selecting a row opens that item's card.
            page.get_by_text("Table", exact=True).click()
            grid = page.locator("[data-testid=stDataFrame]").first
            expect(grid).to_be_visible()
            box = grid.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + 12, box["y"] + 35 + 35 * 2 + 17)  # third row
            expect(page).to_have_url(re.compile(r"item=(?!2(&|$))\d+"))
            expect(accept).to_have_count(1)

            # A deep link opened directly, as the first page of a new tab.
            page.goto(f"{url}/Review?item=6")
            expect(page.get_by_text("Which day has the tallest bar in the chart?")).to_be_visible()
            expect(page.get_by_role("link", name="Home")).to_be_visible()  # the shared frame

            # Dataset health: charts drawn, the curator's decision counted, nothing raised.
            page.goto(f"{url}/Health?dataset=1&curator=ana")
            expect(page.get_by_role("heading", name="Correct letters")).to_be_visible()
            expect(page.get_by_role("heading", name="Curators")).to_be_visible()
            expect(page.locator("[data-testid=stVegaLiteChart]").first).to_be_visible()
            expect(page.locator("[data-testid=stException]")).to_have_count(0)
            page.screenshot(path=SCREENSHOTS / "vqa-e2e-health.png", full_page=True)

            # Export the accepted item as JSON through the download button.
            page.goto(f"{url}/Export?dataset=1&curator=ana")
            expect(page.get_by_text("Items to export")).to_be_visible()
            page.get_by_role("button", name="Export", exact=True).click()
            download_button = page.get_by_role("button", name="Download questions.json")
            expect(download_button).to_be_visible()
            page.screenshot(path=SCREENSHOTS / "vqa-e2e-export.png", full_page=True)
            with page.expect_download() as pending:
                download_button.click()
            saved = tmp_path / "export.json"
            pending.value.save_as(saved)
            records = json.loads(saved.read_text())
            assert [record["id"] for record in records] == ["q01"]
            assert records[0]["review"]["status"] == "accepted"
            assert records[0]["question"] == "Which shape in the image is red?"
        finally:
            browser.close()
            if database is not None:
                database.close()


def _run(database: Database) -> Run:
    with database.read() as session:
        run = session.get(Run, 1)
        assert run is not None and run.status is not RunStatus.FAILED, run and run.message
        return run


def _item(database: Database, item_id: int) -> Item:
    with database.read() as session:
        return session.get_one(Item, item_id)
