"""Dataset ingest against a real SQLite file and data dir: all of it, or none of it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from db.engine import Database
from db.models import Dataset, Image, Item, ItemStatus, QuestionType
from vqa_engine.errors import IngestError, InputError
from vqa_engine.image_sources import SourceLimits
from vqa_engine.images import image_paths_for
from vqa_engine.ingest import IngestLimits, IngestSummary, ingest_dataset
from vqa_engine.questions import QuestionLimits

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo"
Snapshot = Callable[[], dict[str, object]]


def png_bytes(
    colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30)
) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size: tuple[int, int] = (120, 90)) -> bytes:
    buffer = io.BytesIO()
    PILImage.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buffer, format="JPEG")
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def q(image: str, qid: str, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": qid,
        "question": f"What is in {image[:20]}?",
        "question_type": "fill_in_blank",
        "image": image,
    }
    row.update(fields)
    return row


def counts(database: Database) -> tuple[int, int, int]:
    with database.read() as session:
        return (
            session.scalar(select(func.count()).select_from(Dataset)) or 0,
            session.scalar(select(func.count()).select_from(Image)) or 0,
            session.scalar(select(func.count()).select_from(Item)) or 0,
        )


def import_demo(
    database: Database, data: Path, name: str = "demo", **options: object
) -> IngestSummary:
    return ingest_dataset(
        database, DEMO / "questions.json", [DEMO / "images"], name, data=data, workers=1, **options
    )  # type: ignore[arg-type]


@pytest.fixture
def seeded(database: Database, data_dir: Path) -> IngestSummary:
    """The demo dataset already imported, so "unchanged" covers existing rows and files."""
    return import_demo(database, data_dir)


# --- successful imports ------------------------------------------------------------------


def test_demo_import_stores_every_item_and_each_image_once(
    database: Database, data_dir: Path
) -> None:
    summary = import_demo(database, data_dir)
    assert (
        summary.dataset_name,
        summary.items,
        summary.images_stored,
        summary.duplicates_skipped,
    ) == ("demo", 12, 10, 0)  # 9 files (two used twice) + one inline data: URL
    assert summary.seconds > 0
    assert counts(database) == (1, 10, 12)
    with database.read() as session:
        items = session.scalars(select(Item).order_by(Item.position)).all()
        images = {i.id: i for i in session.scalars(select(Image))}
        dataset = session.scalars(select(Dataset)).one()
    assert dataset.source_name == "questions.json"
    assert [i.external_id for i in items] == [f"q{n:02d}" for n in range(1, 13)]
    assert [i.position for i in items] == list(range(12))
    assert all(i.status is ItemStatus.PENDING and i.version == 1 for i in items)
    assert items[6].image_ref == "images/chart.png"  # the field as given
    assert items[5].image_id == items[6].image_id  # chart.png, named two ways
    assert items[0].image_id == items[1].image_id  # shapes.png, used twice
    assert items[2].extra == {"category": "counting", "language": "en", "reference_answer": "5"}
    assert items[2].question_type is QuestionType.FILL_IN_BLANK
    assert items[0].question_type is QuestionType.MULTIPLE_CHOICE
    for image in images.values():
        original = data_dir / image.original_path
        prepared = data_dir / image.prepared_path
        assert hashlib.sha256(original.read_bytes()).hexdigest() == image.sha256
        assert (image.original_path, image.prepared_path) == image_paths_for(
            image.sha256, image.original_path.rsplit(".", 1)[1]
        )
        with PILImage.open(prepared) as jpeg:
            assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
            assert jpeg.size == (image.prepared_width, image.prepared_height)
        assert prepared.stat().st_size == image.prepared_byte_size
    arrow = images[items[8].image_id]
    assert (arrow.original_name, arrow.format) == ("arrow_exif.jpg", "JPEG")
    assert (arrow.width, arrow.height, arrow.prepared_width, arrow.prepared_height) == (
        360,
        480,
        360,
        480,
    )
    assert not (data_dir / ".staging").exists()


@pytest.mark.parametrize(
    ("questions", "images"),
    [
        ("questions.csv", "images.zip"),
        ("questions.jsonl", "images.zip"),
        ("questions.json", "images.zip"),
    ],
)
def test_other_formats_of_the_demo_store_nothing_new(
    database: Database,
    data_dir: Path,
    seeded: IngestSummary,
    storage_snapshot: Snapshot,
    questions: str,
    images: str,
) -> None:
    files_before = storage_snapshot()["files"]
    summary = ingest_dataset(database, DEMO / questions, [DEMO / images], "again", workers=1)
    assert (summary.items, summary.images_stored, summary.duplicates_skipped) == (12, 0, 10)
    assert storage_snapshot()["files"] == files_before
    assert counts(database) == (2, 10, 24)


def test_pool_and_single_process_store_the_same_images(
    tmp_path: Path, database: Database, data_dir: Path
) -> None:
    calls: list[tuple[int, int]] = []
    pooled = ingest_dataset(
        database,
        DEMO / "questions.json",
        [DEMO / "images.zip"],
        "pooled",
        workers=2,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert (pooled.items, pooled.images_stored) == (12, 10)
    assert calls[0] == (0, 10) and calls[-1] == (10, 10)
    assert [done for done, _ in calls] == list(range(11))
    with database.read() as session:
        pooled_rows = sorted(
            session.execute(
                select(
                    Image.sha256,
                    Image.width,
                    Image.height,
                    Image.prepared_width,
                    Image.prepared_height,
                    Image.prepared_quality,
                    Image.format,
                )
            ).all()
        )
    other = tmp_path / "other"
    other.mkdir()
    from db.engine import open_database

    single_db = open_database(f"sqlite:///{other / 'vqa.db'}")
    try:
        import_demo(single_db, other)
        with single_db.read() as session:
            single_rows = sorted(
                session.execute(
                    select(
                        Image.sha256,
                        Image.width,
                        Image.height,
                        Image.prepared_width,
                        Image.prepared_height,
                        Image.prepared_quality,
                        Image.format,
                    )
                ).all()
            )
    finally:
        single_db.close()
    assert pooled_rows == single_rows


def test_same_bytes_under_two_names_are_stored_once(
    tmp_path: Path, database: Database, data_dir: Path
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    data = png_bytes()
    (folder / "a.png").write_bytes(data)
    (folder / "copy_of_a.png").write_bytes(data)
    (folder / "b.png").write_bytes(png_bytes((0, 0, 200)))
    questions = write_rows(
        tmp_path / "q.jsonl", [q("a.png", "1"), q("copy_of_a.png", "2"), q("b.png", "3")]
    )
    summary = ingest_dataset(database, questions, [folder], "dupes", workers=1)
    assert (summary.images_stored, summary.duplicates_skipped) == (2, 1)
    with database.read() as session:
        image_ids = session.scalars(select(Item.image_id).order_by(Item.position)).all()
    assert image_ids[0] == image_ids[1] != image_ids[2]
    assert len(list((data_dir / "images" / "original").rglob("*.png"))) == 2


def test_default_question_type_is_stored_and_applied(
    tmp_path: Path, database: Database, data_dir: Path
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes())
    questions = tmp_path / "q.csv"
    questions.write_text("question,image,source\nWhat colour?,a.png,=1+1\n", encoding="utf-8")
    ingest_dataset(
        database, questions, [folder], "typed", default_question_type="multiple_choice", workers=1
    )
    with database.read() as session:
        dataset = session.scalars(select(Dataset)).one()
        item = session.scalars(select(Item)).one()
    assert dataset.default_question_type is QuestionType.MULTIPLE_CHOICE
    assert item.question_type is QuestionType.MULTIPLE_CHOICE
    assert item.external_id == "2" and item.extra == {"source": "=1+1"}


def test_long_data_url_is_stored_as_its_image_with_a_short_reference(
    tmp_path: Path,
    database: Database,
    data_dir: Path,
) -> None:
    data = jpeg_bytes((64, 64))
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    assert len(url) > 1000
    questions = write_rows(tmp_path / "q.jsonl", [q(url, "1"), q(url, "2")])
    summary = ingest_dataset(database, questions, [], "inline", workers=1)
    assert (summary.images_stored, summary.duplicates_skipped) == (1, 0)
    sha256 = hashlib.sha256(data).hexdigest()
    with database.read() as session:
        refs = session.scalars(select(Item.image_ref)).all()
        image = session.scalars(select(Image)).one()
    assert refs == [f"data:image/jpeg;base64,sha256:{sha256}"] * 2
    assert image.sha256 == sha256 and (data_dir / image.original_path).read_bytes() == data


def test_data_dir_defaults_to_the_environment(
    tmp_path: Path, database: Database, data_dir: Path
) -> None:
    ingest_dataset(database, DEMO / "questions.json", [DEMO / "images"], "env", workers=1)
    assert len(list((data_dir / "images" / "prepared").rglob("*.jpg"))) == 10


# --- refused imports leave everything as it was ------------------------------------------


@dataclass
class Case:
    questions: Path
    images: list[Path]
    expected: list[tuple[int | None, str | None, str]]  # (row, field, text in reason)
    limits: IngestLimits = field(default_factory=IngestLimits)
    file: str | None = None  # the file named by the problems; default: the questions file


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "upload"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _zip(tmp_path: Path, entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> Path:
    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (
                stat.S_IFLNK | 0o777 if name in symlinks else stat.S_IFREG | 0o644
            ) << 16
            archive.writestr(info, data)
    return path


def _text(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _good_images(tmp_path: Path) -> Path:
    return _folder(tmp_path, {"a.png": png_bytes(), "b.png": png_bytes((0, 90, 0))})


CASES: dict[str, Callable[[Path], Case]] = {
    "empty file": lambda t: Case(
        _text(t, "q.json", ""), [_good_images(t)], [(None, None, "the file is empty")]
    ),
    "malformed JSON": lambda t: Case(
        _text(t, "q.json", '[{"question": "a", "image": "a.png",]'),
        [_good_images(t)],
        [(None, None, "malformed JSON: ")],
    ),
    "malformed JSONL line": lambda t: Case(
        _text(t, "q.jsonl", json.dumps(q("a.png", "1")) + "\n{not json}\n"),
        [_good_images(t)],
        [(2, None, "malformed JSON on this line")],
    ),
    "CSV missing required columns": lambda t: Case(
        _text(t, "q.csv", "id,question\n1,hi\n"),
        [_good_images(t)],
        [(1, None, "missing required columns 'image', 'question_type'")],
    ),
    "missing question": lambda t: Case(
        write_rows(
            t / "q.jsonl",
            [q("a.png", "1"), {"id": "2", "question_type": "fill_in_blank", "image": "b.png"}],
        ),
        [_good_images(t)],
        [(2, "question", "missing; every row needs a question")],
    ),
    "empty question": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", "1", question="  ")]),
        [_good_images(t)],
        [(1, "question", "empty; every row needs a question")],
    ),
    "unknown question type": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", "1", question_type="yes_no")]),
        [_good_images(t)],
        [
            (
                1,
                "question_type",
                "unknown question_type 'yes_no'; use one of: multiple_choice, fill_in_blank",
            )
        ],
    ),
    "missing image field": lambda t: Case(
        write_rows(
            t / "q.jsonl", [{"id": "1", "question": "hi", "question_type": "fill_in_blank"}]
        ),
        [_good_images(t)],
        [(1, "image", "missing; every row needs an image")],
    ),
    "image not found": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", "1"), q("c.png", "2")]),
        [_good_images(t)],
        [(2, "image", "image 'c.png' not found among the 2 uploaded images")],
    ),
    "corrupt or truncated image": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", "1"), q("cut.jpg", "2")]),
        [_folder(t, {"a.png": png_bytes(), "cut.jpg": jpeg_bytes()[:600]})],
        [(2, "image", "cut.jpg: corrupt or truncated image")],
    ),
    "text disguised as a JPEG": lambda t: Case(
        write_rows(t / "q.jsonl", [q("photo.jpg", "1")]),
        [_folder(t, {"photo.jpg": b"#!/bin/sh\necho definitely a photo\n"})],
        [
            (
                1,
                "image",
                "photo.jpg: unsupported image format: its content is not a known image format",
            )
        ],
    ),
    "ICO disguised as a PNG": lambda t: Case(
        write_rows(t / "q.jsonl", [q("icon.png", "1")]),
        [_folder(t, {"icon.png": _ico()})],
        [(1, "image", "icon.png: unsupported image format: its content is ICO")],
    ),
    "decompression bomb": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", "1"), q("huge.png", "2")]),
        [_folder(t, {"a.png": png_bytes(), "huge.png": bomb_png()})],
        [
            (
                2,
                "image",
                "huge.png: image too large: 10,000,000,000 pixels is above the limit of "
                "100,000,000 (a possible decompression bomb)",
            )
        ],
    ),
    "zip entry with ..": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", "1")]),
        [_zip(t, {"a.png": png_bytes(), "../../etc/evil.png": png_bytes()})],
        [(None, None, "zip entry '../../etc/evil.png' refused: its path leaves the archive")],
        file="upload.zip",
    ),
    "zip entry with an absolute path": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", "1")]),
        [_zip(t, {"a.png": png_bytes(), "/tmp/evil.png": png_bytes()})],
        [(None, None, "zip entry '/tmp/evil.png' refused: it has an absolute path")],
        file="upload.zip",
    ),
    "zip entry that is a symlink": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", "1")]),
        [_zip(t, {"a.png": png_bytes(), "link.png": b"/etc/passwd"}, symlinks=("link.png",))],
        [(None, None, "zip entry 'link.png' refused: it is a symbolic link")],
        file="upload.zip",
    ),
    "zip bomb": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", "1"), q("bomb.png", "2")]),
        [_zip(t, {"a.png": png_bytes(), "bomb.png": b"\0" * (3 * 1024 * 1024)})],
        [
            (
                2,
                "image",
                "upload.zip:bomb.png is larger than the 1 MB per-image limit, counted "
                "while reading (the archive claims 3,145,728 bytes); a possible zip bomb",
            )
        ],
        IngestLimits(sources=SourceLimits(max_file_bytes=1024 * 1024)),
    ),
    "upload larger than the total cap": lambda t: Case(
        write_rows(t / "q.jsonl", [q(f"{i}.jpg", str(i)) for i in range(6)]),
        [_folder(t, {f"{i}.jpg": jpeg_bytes((200, 200)) for i in range(6)})],
        [
            (
                None,
                None,
                "the images add up to more than the 39 KB upload limit (counted while "
                "reading and extracting)",
            )
        ],
        IngestLimits(sources=SourceLimits(max_upload_bytes=40_000)),
    ),
    "duplicate ids": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", "x"), q("b.png", "x")]),
        [_good_images(t)],
        [(2, "id", "duplicate id 'x', already used by row 1")],
    ),
    "oversized question file": lambda t: Case(
        write_rows(t / "q.jsonl", [q("a.png", str(i)) for i in range(50)]),
        [_good_images(t)],
        [(None, None, "above the limit of 2 KB; split it into smaller files")],
        IngestLimits(questions=QuestionLimits(max_file_bytes=2000)),
    ),
    "oversized image file": lambda t: Case(
        write_rows(t / "q.jsonl", [q("big.jpg", "1")]),
        [_folder(t, {"big.jpg": jpeg_bytes((400, 400))})],
        [(1, "image", "big.jpg is larger than the 10 KB per-image limit")],
        IngestLimits(sources=SourceLimits(max_file_bytes=10_000)),
    ),
    "invalid data: URL": lambda t: Case(
        write_rows(t / "q.jsonl", [q("data:image/png;base64,!!!not-base64!!!", "1")]),
        [],
        [(1, "image", "the data: URL is not valid base64")],
    ),
}


def _ico() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (32, 32)).save(buffer, format="ICO")
    return buffer.getvalue()


def assert_refused(
    run: Callable[[], object],
    storage_snapshot: Snapshot,
    expected: list[tuple[int | None, str | None, str]],
    file: str,
) -> IngestError:
    before = storage_snapshot()
    with pytest.raises(IngestError) as caught:
        run()
    problems = caught.value.problems
    for row, field_name, text in expected:
        matching = [
            p for p in problems if p.row == row and p.field == field_name and text in p.reason
        ]
        assert matching, f"no problem ({row}, {field_name}, {text!r}) in {problems}"
        assert all(p.file.endswith(file) for p in matching)
    assert str(caught.value).startswith(f"{len(problems)} problem")
    assert storage_snapshot() == before
    return caught.value


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_with_its_reason_and_changes_nothing(
    case: str,
    tmp_path: Path,
    database: Database,
    data_dir: Path,
    seeded: IngestSummary,
    storage_snapshot: Snapshot,
) -> None:
    built = CASES[case](tmp_path)
    assert_refused(
        lambda: ingest_dataset(
            database, built.questions, built.images, "new", limits=built.limits, workers=1
        ),
        storage_snapshot,
        built.expected,
        built.file or built.questions.name,
    )


def test_every_problem_of_every_kind_is_reported_together(
    tmp_path: Path,
    database: Database,
    seeded: IngestSummary,
    storage_snapshot: Snapshot,
) -> None:
    images = _folder(
        tmp_path, {"a.png": png_bytes(), "cut.jpg": jpeg_bytes()[:500], "huge.png": bomb_png()}
    )
    questions = write_rows(
        tmp_path / "q.jsonl",
        [
            q("a.png", "1"),
            q("cut.jpg", "2"),
            q("a.png", "3", question=""),
            q("gone.png", "4"),
            q("huge.png", "5"),
            q("cut.jpg", "6"),
        ],
    )
    error = assert_refused(
        lambda: ingest_dataset(database, questions, [images], "new", workers=2),
        storage_snapshot,
        [
            (2, "image", "corrupt or truncated"),
            (3, "question", "empty"),
            (4, "image", "not found"),
            (5, "image", "decompression bomb"),
            (6, "image", "corrupt or truncated"),
        ],
        "q.jsonl",
    )
    assert [p.row for p in error.problems] == [2, 3, 4, 5, 6]


def test_bad_image_found_by_a_pool_worker_leaves_no_staged_files(
    tmp_path: Path,
    database: Database,
    data_dir: Path,
    seeded: IngestSummary,
    storage_snapshot: Snapshot,
) -> None:
    files = {f"{i}.jpg": jpeg_bytes() for i in range(6)}
    files["3.jpg"] = files["3.jpg"][:300]
    images = _folder(tmp_path, files)
    questions = write_rows(tmp_path / "q.jsonl", [q(name, name) for name in files])
    assert_refused(
        lambda: ingest_dataset(database, questions, [images], "new", workers=2),
        storage_snapshot,
        [(4, "image", "3.jpg: corrupt or truncated image")],
        "q.jsonl",
    )
    assert not (data_dir / ".staging").exists()


def test_taken_dataset_name_is_refused_with_the_fix_and_changes_nothing(
    database: Database,
    data_dir: Path,
    seeded: IngestSummary,
    storage_snapshot: Snapshot,
) -> None:
    before = storage_snapshot()
    with pytest.raises(
        InputError,
        match=r"a dataset named 'demo' already exists; choose another "
        r"name \(--dataset on the command line\)",
    ):
        import_demo(database, data_dir, name=" demo ")
    assert storage_snapshot() == before


def test_empty_dataset_name_is_refused(database: Database, data_dir: Path) -> None:
    with pytest.raises(InputError, match="the dataset name is empty"):
        import_demo(database, data_dir, name="  ")


def test_failure_while_writing_rows_removes_moved_files_but_never_older_ones(
    tmp_path: Path,
    database: Database,
    data_dir: Path,
    seeded: IngestSummary,
    storage_snapshot: Snapshot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    new_image = jpeg_bytes()
    orphan_sha = hashlib.sha256(new_image).hexdigest()
    orphan_rel, _ = image_paths_for(orphan_sha, "jpg")
    orphan = data_dir / orphan_rel  # a file from before, for an image not in the database
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(new_image)
    images = _folder(
        tmp_path,
        {
            "new.jpg": new_image,
            "other.png": png_bytes((1, 2, 3)),
            "shapes.png": (DEMO / "images" / "shapes.png").read_bytes(),
        },
    )
    questions = write_rows(
        tmp_path / "q.jsonl", [q("new.jpg", "1"), q("other.png", "2"), q("shapes.png", "3")]
    )
    before = storage_snapshot()

    def fail(ref: str, sha256: str) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr("vqa_engine.ingest._image_ref_for_storage", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_dataset(database, questions, [images], "new", workers=1)
    assert storage_snapshot() == before
    assert orphan.read_bytes() == new_image


def test_pool_workers_never_run_the_script_that_started_them(
    tmp_path: Path, database: Database, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamlit runs each page as `__main__`; pool children must not run the page again."""
    import sys
    import types

    marker = tmp_path / "page-ran-again"
    page = tmp_path / "page.py"
    page.write_text(f"open({str(marker)!r}, 'a').write('x')\n")
    script = types.ModuleType("__main__")
    script.__file__ = str(page)
    script.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", script)
    summary = ingest_dataset(database, DEMO / "questions.json", [DEMO / "images.zip"],
                             "pooled", workers=2)
    assert summary.images_stored == 10
    assert sys.modules["__main__"] is script
    assert not marker.exists()
