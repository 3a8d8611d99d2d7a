"""Exports: every format's content, image modes, selection, formula safety and atomicity."""

from __future__ import annotations

import base64
import csv
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from curated_rows import add_dataset, add_image, add_item, jpeg_bytes
from db.engine import Database
from db.models import Image, ItemStatus, QuestionType
from vqa_engine.errors import ExportError
from vqa_engine.export import (
    ExportFormat,
    ExportSelection,
    ImageMode,
    default_export_path,
    default_file_name,
    export_dataset,
    export_preview,
    neutralise_formula,
)

EXTRA = {
    "source": "coco/val2017",
    "difficulty": 3,
    "score": 0.25,
    "tags": ["animal", "indoor"],
    "meta": {"annotator": "Zoë", "checked": True, "note": None},
    "id": "clashes with the core id field",
}


@dataclass(frozen=True)
class Sample:
    dataset_id: int
    cat_bytes: bytes
    dog_bytes: bytes


@pytest.fixture
def sample(database: Database, data_dir: Path) -> Sample:
    with database.write() as session:
        dataset = add_dataset(session, "pets & co")
        cat = add_image(session, data_dir, "cat.jpg", (200, 30, 30))
        dog = add_image(session, data_dir, "dog.jpg", (30, 30, 200))
        add_item(session, dataset, cat, external_id="q1", status=ItemStatus.ACCEPTED,
                 answer="cat", options={"A": "dog", "B": "cat", "C": "horse"},
                 correct_letter="B", extra=EXTRA, position=0)
        add_item(session, dataset, dog, external_id="q2", status=ItemStatus.GENERATED,
                 question="=HYPERLINK(\"http://x\")", answer="+1 dog",
                 options={"A": "+1 dog", "B": "@cat", "C": "-3", "D": "bird", "E": "fish"},
                 correct_letter="A", position=1)
        add_item(session, dataset, cat, external_id="q3", status=ItemStatus.ACCEPTED,
                 question="How many cats? ___", question_type=QuestionType.FILL_IN_BLANK,
                 answer="1", explanation=None, extra={"category": "counting"}, position=2)
        add_item(session, dataset, dog, external_id="q4", status=ItemStatus.PENDING, position=3)
        add_item(session, dataset, dog, external_id="q5", status=ItemStatus.REJECTED,
                 answer="wolf", options={"A": "wolf", "B": "dog"}, correct_letter="A",
                 position=4)
        dataset_id = dataset.id
    return Sample(dataset_id, jpeg_bytes((200, 30, 30)), jpeg_bytes((30, 30, 200)))


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def test_json_is_a_list_of_pipeline_records_of_accepted_items(
    database: Database, sample: Sample, tmp_path: Path,
) -> None:
    out = tmp_path / "out" / "curated.json"
    summary = export_dataset(database, sample.dataset_id, out)
    assert (summary.items, summary.path) == (2, out.resolve())
    assert summary.bytes == out.stat().st_size and summary.seconds >= 0
    first, second = load_json(out)
    assert first["id"] == "q1" and first["image"] == "cat.jpg"
    assert first["question"] == "What animal is shown?"
    assert first["question_type"] == "multiple_choice"
    assert first["answer"] == "B" and first["correct_option"] == "cat"
    assert first["options"] == {"A": "dog", "B": "cat", "C": "horse"}
    assert first["full_question"] == "What animal is shown?\nA: dog\nB: cat\nC: horse"
    assert first["explanation"] == "It has whiskers."
    assert first["review"]["status"] == "accepted"
    assert first["review"]["model"] == "qwen2.5-vl-7b-instruct"
    assert second["id"] == "q3" and second["answer"] == "1" and second["options"] == {}
    assert second["correct_option"] == "1" and second["explanation"] is None


def test_json_round_trips_the_inputs_extra_fields_unchanged(
    database: Database, sample: Sample, tmp_path: Path,
) -> None:
    out = tmp_path / "curated.json"
    export_dataset(database, sample.dataset_id, out)
    record = load_json(out)[0]
    for name, value in EXTRA.items():
        key = name if name != "id" else "input_id"
        assert record[key] == value
    assert "Zoë" in out.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (ExportSelection.ACCEPTED, ["q1", "q3"]),
        (ExportSelection.ACCEPTED_AND_GENERATED, ["q1", "q2", "q3"]),
        (ExportSelection.ALL, ["q1", "q2", "q3", "q4", "q5"]),
    ],
)
def test_selection_chooses_items_by_status_in_source_order(
    database: Database, sample: Sample, tmp_path: Path, selection: ExportSelection,
    expected: list[str],
) -> None:
    out = tmp_path / "x.jsonl"
    summary = export_dataset(database, sample.dataset_id, out, fmt=ExportFormat.JSONL,
                             selection=selection, page_size=2)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == expected
    assert summary.items == len(expected)


def test_an_ungenerated_item_is_exported_without_an_answer(
    database: Database, sample: Sample, tmp_path: Path,
) -> None:
    out = tmp_path / "all.json"
    export_dataset(database, sample.dataset_id, out, selection=ExportSelection.ALL)
    pending = next(r for r in load_json(out) if r["id"] == "q4")
    assert (pending["answer"], pending["options"], pending["review"]["status"]) == (
        None, {}, "pending")


def test_llava_records_are_conversations(database: Database, sample: Sample,
                                         tmp_path: Path) -> None:
    out = tmp_path / "llava.json"
    export_dataset(database, sample.dataset_id, out, fmt=ExportFormat.LLAVA)
    mc, blank = load_json(out)
    assert mc == {
        "id": "q1",
        "image": "cat.jpg",
        "conversations": [
            {"from": "human",
             "value": "<image>\nWhat animal is shown?\nA: dog\nB: cat\nC: horse"},
            {"from": "gpt", "value": "B"},
        ],
    }
    assert blank["conversations"][0]["value"] == "<image>\nHow many cats? ___"
    assert blank["conversations"][1] == {"from": "gpt", "value": "1"}


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_mmbench_tsv_has_option_columns_base64_images_and_no_live_formulas(
    database: Database, sample: Sample, tmp_path: Path,
) -> None:
    out = tmp_path / "mmbench.tsv"
    export_dataset(database, sample.dataset_id, out, fmt=ExportFormat.MMBENCH_TSV,
                   selection=ExportSelection.ACCEPTED_AND_GENERATED)
    header = out.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header == ["index", "question", "A", "B", "C", "D", "E", "answer", "category",
                      "image", "id"]
    first, second, third = read_tsv(out)
    assert (first["index"], first["question"], first["answer"]) == ("0", "What animal is shown?",
                                                                    "B")
    assert (first["A"], first["B"], first["C"], first["D"], first["E"]) == (
        "dog", "cat", "horse", "", "")
    assert first["category"] == "multiple_choice" and first["id"] == "q1"
    assert base64.b64decode(first["image"]) == sample.cat_bytes
    assert second["question"] == "'=HYPERLINK(\"http://x\")"
    assert (second["A"], second["B"], second["C"], second["D"]) == (
        "'+1 dog", "'@cat", "'-3", "bird")
    assert base64.b64decode(second["image"]) == sample.dog_bytes
    assert (third["index"], third["answer"], third["category"]) == ("2", "1", "counting")
    assert third["A"] == ""


def test_formula_neutralisation_touches_only_dangerous_cells() -> None:
    assert [neutralise_formula(v) for v in ["=1+1", "+1", "-1", "@SUM(A1)", "\t=x", "a=b",
                                            "", "1"]] == [
        "'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\t=x", "a=b", "", "1"]


def test_parquet_embeds_image_bytes_and_the_record_fields(
    database: Database, sample: Sample, tmp_path: Path,
) -> None:
    out = tmp_path / "curated.parquet"
    export_dataset(database, sample.dataset_id, out, fmt=ExportFormat.PARQUET)
    rows = pq.read_table(out).to_pylist()
    assert [row["id"] for row in rows] == ["q1", "q3"]
    first = rows[0]
    assert first["image"] == {"bytes": sample.cat_bytes, "path": "cat.jpg"}
    assert (first["question"], first["question_type"], first["answer"]) == (
        "What animal is shown?", "multiple_choice", "B")
    assert json.loads(first["options"]) == {"A": "dog", "B": "cat", "C": "horse"}
    assert first["correct_option"] == "cat" and first["status"] == "accepted"
    assert first["full_question"].endswith("C: horse")
    assert json.loads(first["extra"]) == EXTRA
    assert rows[1]["answer"] == "1" and rows[1]["explanation"] is None


def test_zip_holds_the_export_file_and_each_image_once(
    database: Database, sample: Sample, tmp_path: Path,
) -> None:
    out = tmp_path / "bundle.zip"
    export_dataset(database, sample.dataset_id, out, selection=ExportSelection.ALL,
                   image_mode=ImageMode.ZIP)
    with zipfile.ZipFile(out) as archive:
        names = sorted(archive.namelist())
        assert names == ["bundle.json", "images/cat.jpg", "images/dog.jpg"]
        records = json.loads(archive.read("bundle.json"))
        for record in records:
            assert record["image"] in names
        by_id = {r["id"]: r for r in records}
        assert archive.read(by_id["q1"]["image"]) == sample.cat_bytes
        assert archive.read(by_id["q2"]["image"]) == sample.dog_bytes


def test_zip_names_images_uniquely_when_two_files_share_a_name(
    database: Database, data_dir: Path, tmp_path: Path,
) -> None:
    with database.write() as session:
        dataset = add_dataset(session)
        first = add_image(session, data_dir, "photos/a/img.jpg", (1, 2, 3))
        second = add_image(session, data_dir, "photos/b/img.jpg", (200, 100, 0))
        add_item(session, dataset, first, external_id="1", status=ItemStatus.ACCEPTED)
        add_item(session, dataset, second, external_id="2", status=ItemStatus.ACCEPTED)
        dataset_id, second_sha = dataset.id, second.sha256
    out = tmp_path / "two.zip"
    export_dataset(database, dataset_id, out, fmt=ExportFormat.LLAVA, image_mode=ImageMode.ZIP)
    with zipfile.ZipFile(out) as archive:
        records = json.loads(archive.read("two.json"))
        assert [r["image"] for r in records] == ["images/img.jpg",
                                                 f"images/img-{second_sha[:10]}.jpg"]
        assert set(archive.namelist()) == {"two.json", *(r["image"] for r in records)}


def test_embedded_images_are_data_urls_of_the_original(
    database: Database, sample: Sample, tmp_path: Path,
) -> None:
    out = tmp_path / "embedded.jsonl"
    export_dataset(database, sample.dataset_id, out, fmt=ExportFormat.JSONL,
                   image_mode=ImageMode.EMBEDDED)
    record = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    prefix = "data:image/jpeg;base64,"
    assert record["image"].startswith(prefix)
    assert base64.b64decode(record["image"][len(prefix):]) == sample.cat_bytes


def test_a_stream_receives_the_export(database: Database, sample: Sample) -> None:
    stream = io.BytesIO()
    summary = export_dataset(database, sample.dataset_id, stream, fmt=ExportFormat.JSONL)
    assert summary.path is None and summary.bytes == len(stream.getvalue())
    assert len(stream.getvalue().splitlines()) == 2


def break_image(database: Database, data_dir: Path, name: str) -> None:
    with database.read() as session:
        from sqlalchemy import select

        image = session.scalar(select(Image).where(Image.original_name == name))
        assert image is not None
        (data_dir / image.original_path).unlink()


def test_a_failing_export_leaves_no_file_and_keeps_the_previous_one(
    database: Database, sample: Sample, data_dir: Path, tmp_path: Path,
) -> None:
    break_image(database, data_dir, "dog.jpg")
    out = tmp_path / "exports" / "curated.jsonl"
    out.parent.mkdir()
    with pytest.raises(ExportError, match="cannot be read"):
        export_dataset(database, sample.dataset_id, out, fmt=ExportFormat.JSONL,
                       selection=ExportSelection.ALL, image_mode=ImageMode.EMBEDDED,
                       page_size=1)
    assert list(out.parent.iterdir()) == []
    out.write_text("previous export\n")
    for fmt in (ExportFormat.MMBENCH_TSV, ExportFormat.PARQUET):
        with pytest.raises(ExportError, match="dog.jpg|cannot be read"):
            export_dataset(database, sample.dataset_id, out, fmt=fmt,
                           selection=ExportSelection.ALL, page_size=1)
    assert out.read_text() == "previous export\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["curated.jsonl"]


def test_a_failing_export_writes_nothing_to_a_stream(
    database: Database, sample: Sample, data_dir: Path,
) -> None:
    break_image(database, data_dir, "dog.jpg")
    stream = io.BytesIO()
    with pytest.raises(ExportError):
        export_dataset(database, sample.dataset_id, stream, selection=ExportSelection.ALL,
                       image_mode=ImageMode.ZIP)
    assert stream.getvalue() == b""


def test_an_interrupted_export_leaves_no_file(database: Database, sample: Sample,
                                              tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "exports" / "curated.json"
    with pytest.raises(KeyboardInterrupt):
        export_dataset(database, sample.dataset_id, out, progress=stop, page_size=1)
    assert list(out.parent.iterdir()) == []


def test_an_empty_selection_explains_what_is_there(database: Database, data_dir: Path,
                                                   tmp_path: Path) -> None:
    with database.write() as session:
        dataset = add_dataset(session, "fresh")
        image = add_image(session, data_dir)
        add_item(session, dataset, image, external_id="1", status=ItemStatus.GENERATED)
        dataset_id = dataset.id
    with pytest.raises(ExportError, match=r"no items matching 'accepted' \(1 generated\)"):
        export_dataset(database, dataset_id, tmp_path / "none.json")
    assert not (tmp_path / "none.json").exists()


def test_progress_reports_pages_up_to_the_total(database: Database, sample: Sample,
                                                tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    export_dataset(database, sample.dataset_id, tmp_path / "p.json",
                   selection=ExportSelection.ALL, page_size=2,
                   progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_preview_counts_items_and_correct_letters(database: Database, sample: Sample) -> None:
    assert export_preview(database, sample.dataset_id) == (2, {"B": 1})
    count, letters = export_preview(database, sample.dataset_id,
                                    ExportSelection.ACCEPTED_AND_GENERATED)
    assert (count, letters) == (3, {"A": 1, "B": 1})
    assert export_preview(database, sample.dataset_id, ExportSelection.ALL) == (
        5, {"A": 2, "B": 1})


def test_default_file_names_follow_format_and_image_mode() -> None:
    assert default_file_name("pets & co", ExportFormat.MMBENCH_TSV,
                             ImageMode.FILE_NAMES) == "pets_co.tsv"
    assert default_file_name("pets", ExportFormat.JSON, ImageMode.ZIP) == "pets.zip"
    assert default_file_name("v1.2", ExportFormat.PARQUET, ImageMode.EMBEDDED) == "v1.2.parquet"


def test_the_default_export_path_is_in_the_data_dirs_exports_folder(data_dir: Path) -> None:
    path = default_export_path("pets & co", ExportFormat.JSONL, ImageMode.FILE_NAMES)
    assert path.parent == data_dir / "exports"
    assert path.name.startswith("pets_co-") and path.suffix == ".jsonl"


@pytest.mark.postgres
def test_export_reads_a_consistent_snapshot_on_postgresql(
    postgres_database: Database, data_dir: Path, tmp_path: Path,
) -> None:
    with postgres_database.write() as session:
        dataset = add_dataset(session)
        image = add_image(session, data_dir)
        for index in range(5):
            add_item(session, dataset, image, external_id=f"q{index}",
                     status=ItemStatus.ACCEPTED, position=index)
        dataset_id = dataset.id
    out = tmp_path / "pg.parquet"
    summary = export_dataset(postgres_database, dataset_id, out, fmt=ExportFormat.PARQUET,
                             page_size=2)
    assert summary.items == 5
    assert [row["id"] for row in pq.read_table(out).to_pylist()] == [f"q{i}" for i in range(5)]
    assert export_preview(postgres_database, dataset_id) == (5, {"B": 5})


def test_an_ingested_file_round_trips_its_extra_fields_through_review_and_export(
    database: Database, data_dir: Path, tmp_path: Path,
) -> None:
    from vqa_engine import review
    from vqa_engine.ingest import ingest_dataset

    source = tmp_path / "source"
    source.mkdir()
    (source / "cat.jpg").write_bytes(jpeg_bytes((250, 10, 10), size=32))
    rows = [
        {"id": "a1", "question": "What animal is this?", "question_type": "multiple_choice",
         "image": "cat.jpg", "split": "val", "weight": 0.125, "labels": ["pet", "mammal"],
         "meta": {"annotator": "Zoë", "reviewed": False, "note": None}, "big": 2**53},
        {"id": "a2", "question": "How many ears? ___", "question_type": "fill_in_blank",
         "image": "cat.jpg", "split": "test"},
    ]
    questions = source / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                         encoding="utf-8")
    summary = ingest_dataset(database, questions, [source / "cat.jpg"], "ingested", workers=1)

    from sqlalchemy import select

    from db.models import Item

    with database.read() as session:
        items = list(session.scalars(select(Item).where(Item.dataset_id == summary.dataset_id)
                                     .order_by(Item.id)))
    for item, answer, distractors in ((items[0], "cat", ["dog", "fox"]), (items[1], "2", None)):
        edited = review.edit(database, item.id, curator="alice", expected_version=item.version,
                             answer=answer, distractors=distractors)
        review.accept(database, item.id, curator="alice", expected_version=edited.version)

    out = tmp_path / "ingested.json"
    export_dataset(database, summary.dataset_id, out)
    exported = load_json(out)
    assert [r["id"] for r in exported] == ["a1", "a2"]
    for record, row in zip(exported, rows, strict=True):
        for name, value in row.items():
            if name not in ("id", "question", "question_type", "image"):
                assert record[name] == value, name
        assert record["image"] == "cat.jpg" and record["question"] == row["question"]
    assert exported[0]["correct_option"] == "cat"
    assert exported[0]["options"][exported[0]["answer"]] == "cat"
    assert exported[1]["answer"] == "2"
