"""Upload staging: browser files go to disk at once, under their stage, and nowhere else."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from vqa_engine.errors import InputError
from vqa_engine.uploads import (
    StageLimits,
    UploadStage,
    preview_questions,
    safe_file_name,
    sweep_stale_stages,
)


@pytest.mark.parametrize(
    ("given", "kept"),
    [("a.png", "a.png"), ("../../etc/passwd", "passwd"), ("C:\\x\\y.jpg", "y.jpg"), ("dir/z.zip", "z.zip")],
)
def test_file_names_keep_only_their_last_component(given: str, kept: str) -> None:
    assert safe_file_name(given) == kept


@pytest.mark.parametrize("given", ["", "..", "a/..", "bad\x00name.png"])
def test_unusable_file_names_are_refused(given: str) -> None:
    with pytest.raises(InputError, match="rename the file"):
        safe_file_name(given)


def test_staged_files_land_inside_the_stage_sorted_by_kind(data_dir: Path) -> None:
    stage = UploadStage.create(data_dir)
    stage.put_questions("../q.json", io.BytesIO(b"[]"))
    stage.put_image("../../a.png", io.BytesIO(b"png"))
    stage.put_image("pics.ZIP", io.BytesIO(b"zip"))
    assert stage.questions_path == stage.root / "questions" / "q.json"
    assert [p.name for p in stage.image_files()] == ["a.png"]
    assert [p.name for p in stage.archives()] == ["pics.ZIP"]
    assert stage.image_paths() == [stage.images_dir, stage.root / "archives" / "pics.ZIP"]
    assert all(p.resolve().is_relative_to(stage.root) for p in stage.root.rglob("*"))
    assert stage.total_bytes == 8


def test_a_new_question_file_replaces_the_old_one(data_dir: Path) -> None:
    stage = UploadStage.create(data_dir)
    stage.put_questions("old.csv", io.BytesIO(b"x"))
    stage.put_questions("new.json", io.BytesIO(b"[]"))
    assert stage.questions_path is not None and stage.questions_path.name == "new.json"
    assert len(list((stage.root / "questions").iterdir())) == 1


def test_a_stage_over_its_byte_budget_refuses_the_file_and_keeps_nothing_of_it(data_dir: Path) -> None:
    stage = UploadStage.create(data_dir, StageLimits(max_stage_bytes=10))
    stage.put_image("a.png", io.BytesIO(b"12345"))
    with pytest.raises(InputError, match="does not fit"):
        stage.put_image("b.png", io.BytesIO(b"123456789"))
    assert [p.name for p in stage.image_files()] == ["a.png"]
    assert not list(stage.root.rglob("*.part"))


def test_reopen_accepts_tokens_only(data_dir: Path) -> None:
    stage = UploadStage.create(data_dir)
    assert UploadStage.reopen(data_dir, stage.token) == UploadStage(stage.root)
    assert UploadStage.reopen(data_dir, "../../etc") is None
    stage.discard()
    assert UploadStage.reopen(data_dir, stage.token) is None


def test_stale_stages_are_swept_and_fresh_ones_kept(data_dir: Path) -> None:
    old, fresh = UploadStage.create(data_dir), UploadStage.create(data_dir)
    long_ago = time.time() - 3 * 24 * 3600
    os.utime(old.root, (long_ago, long_ago))
    assert sweep_stale_stages(data_dir) == 1
    assert not old.root.exists() and fresh.root.exists()


def test_preview_counts_rows_and_reports_every_problem(data_dir: Path) -> None:
    good = data_dir / "good.json"
    good.write_text(json.dumps([
        {"id": "1", "question": "What colour?", "question_type": "multiple_choice", "image": "a.png"},
        {"id": "2", "question": "How many?", "question_type": "fill_in_blank", "image": "a.png"},
    ]))
    preview = preview_questions(good)
    assert preview.ok and preview.rows == 2 and preview.image_refs == 1
    assert preview.by_type == {"multiple_choice": 1, "fill_in_blank": 1}

    bad = data_dir / "bad.json"
    bad.write_text(json.dumps([
        {"id": "1", "question": "", "question_type": "multiple_choice", "image": "a.png"},
        {"id": "2", "question": "Q", "question_type": "essay", "image": "a.png"},
    ]))
    preview = preview_questions(bad)
    assert not preview.ok and preview.rows == 0
    assert {p.row for p in preview.problems} >= {1, 2}
