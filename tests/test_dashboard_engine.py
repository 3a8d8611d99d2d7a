"""The engine-side helpers behind dashboard buttons: run estimate, test connection,
and which endpoint a regeneration from the review page uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from db.engine import Database
from db.models import Item, ItemStatus
from tests.scripted_endpoint import ScriptedEndpoint
from vqa_engine.connection_check import check_endpoint
from vqa_engine.errors import AuthenticationError, EndpointConnectionError
from vqa_engine.ingest import ingest_dataset
from vqa_engine.prompt_store import current_prompts, default_text, save_template
from vqa_engine.regeneration_target import regeneration_target
from vqa_engine.run_estimate import ImageTokenRule, estimate_run
from vqa_engine.runs import ItemSelection, RunSettings, start_run
from vqa_engine.settings import Endpoint, resolve_endpoint
from vqa_engine.simulator import SIMULATED_MODEL, SimulatorServer

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"
SECRET = "sk-enginehelpers-0123456789-77aa"


@pytest.fixture
def demo(database: Database, data_dir: Path) -> int:
    summary = ingest_dataset(database, DEMO / "questions.json", [DEMO / "images.zip"], "demo",
                             data=data_dir, workers=1)
    return summary.dataset_id


# ------------------------------------------------------------------ estimate


@pytest.mark.parametrize(
    ("size", "tokens"),
    [((448, 448), 256), ((480, 360), 17 * 13), ((10, 10), 4), ((20_000, 20_000), 16_384)],
)
def test_image_tokens_follow_28_pixel_patches_within_bounds(size: tuple[int, int], tokens: int) -> None:
    assert ImageTokenRule().tokens(*size) == tokens


def test_estimate_counts_two_requests_per_multiple_choice_and_one_per_fill_in(
    database: Database, demo: int
) -> None:
    estimate = estimate_run(database, demo, ItemSelection.PENDING)
    assert (estimate.items, estimate.multiple_choice, estimate.fill_in_blank) == (12, 7, 5)
    assert estimate.requests == 7 * 2 + 5
    assert estimate.image_tokens > estimate.requests * 4


def test_estimate_covers_the_same_items_a_run_would_select(database: Database, demo: int) -> None:
    with database.write() as session:
        session.execute(update(Item).where(Item.id.in_([1, 2, 3])).values(status=ItemStatus.FAILED))
    assert estimate_run(database, demo, ItemSelection.FAILED).items == 3
    assert estimate_run(database, demo, ItemSelection.PENDING).items == 9
    assert estimate_run(database, demo, ItemSelection.INCOMPLETE).items == 12
    assert estimate_run(database, demo, ItemSelection.IDS, [2, 5, 5]).items == 2
    run_id = start_run(database, demo, resolve_endpoint("http://127.0.0.1:9/v1"), RunSettings(),
                       ItemSelection.FAILED)
    with database.read() as session:
        from db.models import Run

        assert session.get_one(Run, run_id).total_items == 3


# ------------------------------------------------------------------ test connection


def test_connection_check_reports_latency_and_model(simulator: SimulatorServer) -> None:
    report = check_endpoint(Endpoint(simulator.base_url, SIMULATED_MODEL))
    assert report.latency_ms > 0 and report.model == SIMULATED_MODEL
    assert simulator.base_url in str(report)


def test_connection_check_names_a_refused_key_showing_it_masked() -> None:
    with ScriptedEndpoint(api_key="sk-the-right-one-0000000000") as endpoint:
        with pytest.raises(AuthenticationError) as caught:
            check_endpoint(Endpoint(endpoint.base_url, "m", SECRET, "the run form"))
    message = str(caught.value)
    assert endpoint.base_url in message and "sk-...77aa" in message
    assert SECRET not in message


def test_connection_check_names_an_unreachable_endpoint() -> None:
    with pytest.raises(EndpointConnectionError, match="127.0.0.1:9"):
        check_endpoint(Endpoint("http://127.0.0.1:9/v1", "m"))


# ------------------------------------------------------------------ regeneration target


def test_item_never_generated_uses_the_default_endpoint_and_prompts_in_force(
    database: Database, demo: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VQA_BASE_URL", "http://127.0.0.1:7/v1")
    save_template(database, "answer_mc_en", default_text("answer_mc_en") + "\nBe brief.\n")
    target = regeneration_target(database, 1)
    assert target.ready and target.run_id is None
    assert target.endpoint.base_url == "http://127.0.0.1:7/v1"
    assert target.settings.generation.prompts == current_prompts(database)


def test_regeneration_reuses_the_items_run_and_finds_its_key_again(
    database: Database, demo: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEAM_KEY", SECRET)
    endpoint = resolve_endpoint("http://127.0.0.1:7/v1", "model-x", api_key_env="TEAM_KEY")
    run_id = start_run(database, demo, endpoint, RunSettings(concurrency=3), ItemSelection.PENDING)
    target = regeneration_target(database, 1)
    assert target.ready and target.run_id == run_id
    assert (target.endpoint.model, target.endpoint.api_key) == ("model-x", SECRET)
    assert target.settings.concurrency == 3

    monkeypatch.delenv("TEAM_KEY")
    missing = regeneration_target(database, 1)
    assert not missing.ready and "TEAM_KEY" in (missing.key_missing or "")
    typed = regeneration_target(database, 1, typed_key=SECRET)
    assert typed.ready and typed.endpoint.api_key == SECRET


def test_a_key_typed_into_a_run_form_must_be_typed_again(database: Database, demo: int) -> None:
    endpoint = resolve_endpoint("http://127.0.0.1:7/v1", "m", SECRET)
    start_run(database, demo, endpoint, RunSettings(), ItemSelection.PENDING)
    target = regeneration_target(database, 2)
    assert not target.ready and "run form" in (target.key_missing or "")
    assert SECRET not in (target.key_missing or "")
