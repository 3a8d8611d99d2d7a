"""`python -m vqa_engine import`: summary on success, every problem on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from db.engine import Database
from db.models import Dataset, Item, QuestionType
from vqa_engine.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"
Snapshot = Callable[[], dict[str, object]]


def test_import_prints_a_summary_and_exits_0(
    database: Database,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "import",
            str(DEMO / "questions.csv"),
            "--images",
            str(DEMO / "images.zip"),
            "--dataset",
            "demo",
            "--workers",
            "1",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(
        "imported dataset 'demo' (id 1): 12 items, 10 images stored, 0 duplicates skipped, "
    )
    assert out.rstrip().endswith(" s")
    with database.read() as session:
        assert session.scalars(select(Dataset.name)).all() == ["demo"]
        assert len(session.scalars(select(Item.id)).all()) == 12


def test_reimport_counts_duplicates(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--images", str(DEMO / "images"), "--workers", "1"]
    assert main(["import", str(DEMO / "questions.json"), "--dataset", "one", *args]) == 0
    assert main(["import", str(DEMO / "questions.jsonl"), "--dataset", "two", *args]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "12 items, 0 images stored, 10 duplicates skipped" in last


def test_question_type_option_sets_the_default(
    tmp_path: Path,
    database: Database,
    capsys: pytest.CaptureFixture[str],
) -> None:
    questions = tmp_path / "q.csv"
    questions.write_text("question,image\nWhat colour is it?,shapes.png\n", encoding="utf-8")
    code = main(
        [
            "import",
            str(questions),
            "--images",
            str(DEMO / "images"),
            "--dataset",
            "d",
            "--question-type",
            "fill_in_blank",
            "--workers",
            "1",
        ]
    )
    assert code == 0, capsys.readouterr().err
    with database.read() as session:
        assert session.scalars(select(Item.question_type)).all() == [QuestionType.FILL_IN_BLANK]


def test_every_problem_goes_to_stderr_uncapped_and_nothing_is_stored(
    tmp_path: Path,
    database: Database,
    storage_snapshot: Snapshot,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [
        {"id": str(i), "question": "", "question_type": "fill_in_blank", "image": "shapes.png"}
        for i in range(30)
    ]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    before = storage_snapshot()
    code = main(
        [
            "import",
            str(questions),
            "--images",
            str(DEMO / "images"),
            "--dataset",
            "bad",
            "--workers",
            "1",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[0] == "error: 30 problems found; nothing was imported:"
    assert lines[1] == "  q.jsonl, row 1, field 'question': empty; every row needs a question"
    assert lines[-1] == "  q.jsonl, row 30, field 'question': empty; every row needs a question"
    assert len(lines) == 31 and "more" not in err
    assert storage_snapshot() == before


def test_taken_dataset_name_exits_1_with_the_fix(
    database: Database,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [
        "import",
        str(DEMO / "questions.json"),
        "--images",
        str(DEMO / "images"),
        "--dataset",
        "demo",
        "--workers",
        "1",
    ]
    assert main(args) == 0
    assert main(args) == 1
    assert "a dataset named 'demo' already exists; choose another name" in capsys.readouterr().err


def test_missing_images_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["import", str(DEMO / "questions.json"), "--dataset", "x"])
    assert caught.value.code == 2
    assert "--images" in capsys.readouterr().err


def test_real_command_uses_the_environment_and_the_process_pool(
    tmp_path: Path,
    data_dir: Path,
) -> None:
    env = {**os.environ, "VQA_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    env.pop("VQA_DATABASE_URL", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqa_engine",
            "import",
            str(DEMO / "questions.json"),
            "--images",
            str(DEMO / "images.zip"),
            "--dataset",
            "demo",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "12 items, 10 images stored, 0 duplicates skipped" in done.stdout
    assert (data_dir / "vqa.db").exists()
    assert len(list((data_dir / "images" / "prepared").rglob("*.jpg"))) == 10
