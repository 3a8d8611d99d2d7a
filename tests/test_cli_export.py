"""`python -m vqa_engine export`: the dashboard's exports from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from curated_rows import add_dataset, add_image, add_item
from db.engine import Database
from db.models import ItemStatus
from vqa_engine.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset(database: Database, data_dir: Path) -> str:
    with database.write() as session:
        dataset = add_dataset(session, "birds")
        image = add_image(session, data_dir, "robin.jpg")
        add_item(session, dataset, image, external_id="b1", status=ItemStatus.ACCEPTED,
                 answer="robin", options={"A": "crow", "B": "robin"}, correct_letter="B",
                 extra={"split": "val"})
        add_item(session, dataset, image, external_id="b2", status=ItemStatus.GENERATED,
                 answer="wren", options={"A": "wren", "B": "owl"}, correct_letter="A")
    return "birds"


def test_export_writes_the_accepted_items_as_json_by_default(
    dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "birds.json"
    assert main(["export", "--dataset", dataset, str(out)]) == 0
    records = json.loads(out.read_text(encoding="utf-8"))
    assert [(r["id"], r["answer"], r["correct_option"], r["split"]) for r in records] == [
        ("b1", "B", "robin", "val")]
    assert f"exported 1 items of 'birds' to {out}" in capsys.readouterr().out


def test_export_takes_format_selection_and_image_mode(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "birds.jsonl"
    code = main(["export", "--dataset", dataset, str(out), "--format", "jsonl",
                 "--select", "accepted+generated", "--images", "embedded"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == ["b1", "b2"]
    assert all(r["image"].startswith("data:image/jpeg;base64,") for r in records)


def test_an_unknown_dataset_is_named_with_the_known_ones(
    dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "x.json"
    assert main(["export", "--dataset", "bird", str(out)]) == 1
    assert "no dataset named 'bird'; known datasets: 'birds'" in capsys.readouterr().err
    assert not out.exists()


def test_an_empty_selection_fails_without_a_file(
    database: Database, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with database.write() as session:
        dataset = add_dataset(session, "fresh")
        add_item(session, dataset, add_image(session, data_dir), external_id="1",
                 status=ItemStatus.PENDING)
    out = tmp_path / "fresh.json"
    assert main(["export", "--dataset", "fresh", str(out)]) == 1
    assert "nothing to export" in capsys.readouterr().err
    assert not out.exists()


def test_an_unknown_format_is_a_usage_error(dataset: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["export", "--dataset", dataset, str(tmp_path / "x"), "--format", "xml"])
    assert caught.value.code == 2


def test_the_module_entry_point_exports_a_zip(dataset: str, data_dir: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "birds.zip"
    env = {**os.environ, "VQA_DATA_DIR": str(data_dir)}
    env.pop("VQA_DATABASE_URL", None)
    completed = subprocess.run(
        [sys.executable, "-m", "vqa_engine", "export", "--dataset", dataset, str(out),
         "--format", "llava", "--images", "zip"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["birds.json", "images/robin.jpg"]
        (record,) = json.loads(archive.read("birds.json"))
    assert record["image"] == "images/robin.jpg"
    assert record["conversations"][1] == {"from": "gpt", "value": "B"}


def test_export_can_balance_letters_first_recorded_and_undoable(
    database: Database, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from vqa_engine.bulk import list_batches, undo_batch

    with database.write() as session:
        dataset = add_dataset(session, "skewed")
        image = add_image(session, data_dir)
        for index in range(6):
            add_item(session, dataset, image, external_id=f"s{index}", answer=f"cat{index}",
                     options={"A": f"cat{index}", "B": "dog"}, correct_letter="A",
                     status=ItemStatus.ACCEPTED)
        dataset_id = dataset.id
    out = tmp_path / "skewed.json"
    code = main(["export", "--dataset", "skewed", str(out), "--balance-letters", "--seed", "2",
                 "--curator", "ana"])
    assert code == 0
    letters = [r["answer"] for r in json.loads(out.read_text(encoding="utf-8"))]
    assert sorted(letters) == ["A", "A", "A", "B", "B", "B"]
    printed = capsys.readouterr().out
    assert "2 options: before A=6 B=0 | after A=3 B=3" in printed
    assert "3 items re-ordered" in printed and "undoable" in printed
    (batch,) = list_batches(database, dataset_id)
    assert (batch.curator, batch.item_count) == ("ana", 3)
    undo_batch(database, batch.id, curator="ana")
    assert main(["export", "--dataset", "skewed", str(out)]) == 0
    assert [r["answer"] for r in json.loads(out.read_text(encoding="utf-8"))] == ["A"] * 6
