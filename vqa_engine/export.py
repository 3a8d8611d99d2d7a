"""Exports of a curated dataset: the pipeline's JSON and the common training/eval layouts.

Exports stream: items are read in keyset pages from one read transaction (a consistent
snapshot on SQLite's WAL; REPEATABLE READ on PostgreSQL) and written record by record, so
memory stays flat whatever the dataset's size. The output appears atomically: everything is
written to a temporary file beside the destination, synced, then renamed; on any error the
temporary file is removed and nothing half-written is left behind.

Formats (`ExportFormat`):
- JSON: a list of `records.item_record` (the command-line pipeline's layout); JSONL: one
  such record per line.
- LLaVA: `{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n" +
  full_question}, {"from": "gpt", "value": answer}]}`.
- MMBench TSV: `index, question, A, B, ... (as many as the widest item), answer, category,
  image (base64 of the original image), id`; cells starting with `=`, `+`, `-`, `@`, tab or
  carriage return get a leading `'` so spreadsheets never run them as formulas.
- Parquet: the record's fields, options and extra input fields as JSON text, and the image
  as `{"bytes", "path"}` (the layout Hugging Face `datasets` reads as an image).

Images (`ImageMode`): file names as given at ingest; a zip holding the export file and an
`images/` folder (records then say `images/<name>`); or embedded as `data:` URLs. The TSV
and Parquet layouts always carry the image bytes themselves.
"""

from __future__ import annotations

import base64
import csv
import enum
import io
import json
import os
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, NamedTuple, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.engine import Database, data_dir
from db.models import Dataset, Generation, Image, Item, ItemStatus, QuestionType
from db.queries import letter_histogram, status_counts
from vqa_engine.errors import ExportError, VQAError
from vqa_engine.records import LETTERS, item_record

PAGE_SIZE = 500
IMAGE_CACHE_ITEMS = 16
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
MIME_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
              "TIFF": ".tif"}
Progress = Callable[[int, int], None]


class ExportFormat(str, enum.Enum):
    JSON = "json"
    JSONL = "jsonl"
    LLAVA = "llava"
    MMBENCH_TSV = "mmbench"
    PARQUET = "parquet"

    @property
    def extension(self) -> str:
        return {"json": ".json", "jsonl": ".jsonl", "llava": ".json", "mmbench": ".tsv",
                "parquet": ".parquet"}[self.value]

    @property
    def embeds_images(self) -> bool:
        return self in (ExportFormat.MMBENCH_TSV, ExportFormat.PARQUET)


class ExportSelection(str, enum.Enum):
    ACCEPTED = "accepted"
    ACCEPTED_AND_GENERATED = "accepted+generated"
    ALL = "all"

    @property
    def statuses(self) -> tuple[ItemStatus, ...]:
        """The statuses exported; empty means every item."""
        if self is ExportSelection.ACCEPTED:
            return (ItemStatus.ACCEPTED,)
        if self is ExportSelection.ACCEPTED_AND_GENERATED:
            return (ItemStatus.ACCEPTED, ItemStatus.GENERATED)
        return ()


class ImageMode(str, enum.Enum):
    FILE_NAMES = "names"
    ZIP = "zip"
    EMBEDDED = "embedded"


@dataclass(frozen=True)
class ExportSummary:
    items: int
    path: Path | None  # None when written to a stream
    bytes: int
    seconds: float


class ExportPreview(NamedTuple):
    count: int
    letters: dict[str, int]


# ---------------------------------------------------------------- reading


@dataclass(slots=True)
class _ItemView:
    """The item columns an export reads (plain objects: ORM instances cost ~3x more)."""

    id: int
    external_id: str
    image_ref: str
    question: str
    question_type: QuestionType
    extra: dict[str, Any]
    status: ItemStatus


@dataclass(slots=True)
class _GenerationView:
    id: int
    answer: str | None
    explanation: str | None
    options: dict[str, Any]
    correct_letter: str | None
    full_question: str | None
    model: str | None
    prompt_version: str | None


@dataclass(slots=True)
class _ImageView:
    id: int
    sha256: str
    original_name: str
    original_path: str
    format: str


_ITEM_COLUMNS = (Item.id, Item.external_id, Item.image_ref, Item.question, Item.question_type,
                 Item.extra, Item.status)
_GENERATION_COLUMNS = (Generation.id, Generation.answer, Generation.explanation,
                       Generation.options, Generation.correct_letter, Generation.full_question,
                       Generation.model, Generation.prompt_version)
_IMAGE_COLUMNS = (Image.id, Image.sha256, Image.original_name, Image.original_path, Image.format)


@dataclass(frozen=True, slots=True)
class _Row:
    item: _ItemView
    generation: _GenerationView | None
    image: _ImageView

    def record(self) -> dict[str, Any]:
        # The views carry exactly the attributes `item_record` reads.
        return item_record(cast(Item, self.item), cast(Generation | None, self.generation))


def _row(values: Sequence[Any]) -> _Row:
    items, generations = len(_ITEM_COLUMNS), len(_GENERATION_COLUMNS)
    item = _ItemView(*values[:items])
    generation_values = values[items:items + generations]
    generation = _GenerationView(*generation_values) if generation_values[0] is not None else None
    return _Row(item, generation, _ImageView(*values[items + generations:]))


def _selected(statement: Any, dataset_id: int, statuses: Sequence[ItemStatus]) -> Any:
    statement = statement.where(Item.dataset_id == dataset_id)
    if statuses:
        statement = statement.where(Item.status.in_(statuses))
    return statement


def _count(session: Session, dataset_id: int, statuses: Sequence[ItemStatus]) -> int:
    statement = _selected(select(func.count()).select_from(Item), dataset_id, statuses)
    return int(session.scalar(statement) or 0)


def _rows(
    session: Session, dataset_id: int, statuses: Sequence[ItemStatus], page_size: int
) -> Iterator[list[_Row]]:
    """Pages of rows in source order; only one page is held at a time.

    A keyset walk along the (dataset_id, id) index: each page starts after the last id of
    the previous one, so every page costs the same however deep into the dataset it is.
    """
    last_id = 0
    statement = _selected(
        select(*_ITEM_COLUMNS, *_GENERATION_COLUMNS, *_IMAGE_COLUMNS)
        .select_from(Item)
        .join(Image, Image.id == Item.image_id)
        .outerjoin(Generation, Generation.id == Item.current_generation_id),
        dataset_id,
        statuses,
    )
    while True:
        page = [
            _row(values)
            for values in session.execute(
                statement.where(Item.id > last_id).order_by(Item.id).limit(page_size)
            )
        ]
        if not page:
            return
        yield page
        last_id = page[-1].item.id


def _max_options(session: Session, dataset_id: int, statuses: Sequence[ItemStatus]) -> int:
    statement = _selected(
        select(Generation.options)
        .select_from(Item)
        .join(Generation, Generation.id == Item.current_generation_id)
        .where(Item.question_type == QuestionType.MULTIPLE_CHOICE),
        dataset_id,
        statuses,
    )
    widest = 0
    for options in session.scalars(statement.execution_options(yield_per=2000)):
        widest = max(widest, len(options or {}))
    return widest


def _distinct_images(
    session: Session, dataset_id: int, statuses: Sequence[ItemStatus]
) -> Iterator[Image]:
    used = _selected(select(Item.image_id), dataset_id, statuses)
    statement = select(Image).where(Image.id.in_(used)).order_by(Image.id)
    yield from session.scalars(statement.execution_options(yield_per=500))


# ---------------------------------------------------------------- images


def _image_path(data: Path, image: Image | _ImageView) -> Path:
    return data / image.original_path


class _ImageBytes:
    """Original image bytes, keeping the few most recent (datasets often share images)."""

    def __init__(self, data: Path, capacity: int = IMAGE_CACHE_ITEMS) -> None:
        self._data = data
        self._capacity = capacity
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def read(self, image: Image | _ImageView, external_id: str) -> bytes:
        cached = self._cache.get(image.id)
        if cached is not None:
            self._cache.move_to_end(image.id)
            return cached
        path = _image_path(self._data, image)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise ExportError(
                f"image file {path} of item {external_id!r} cannot be read "
                f"({exc.strerror or type(exc).__name__}); restore the data dir or export "
                "with image names only"
            ) from None
        self._cache[image.id] = content
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return content


def _mime(image: Image | _ImageView) -> str:
    return MIME_TYPES.get((image.format or "").upper(), "application/octet-stream")


def _archive_name(image: Image, taken: set[str]) -> str:
    """`images/<original file name>`, made safe and unique within the archive."""
    base = PurePosixPath((image.original_name or "").replace("\\", "/")).name
    base = re.sub(r"[^\w.\-]+", "_", base).strip("._")
    if not base:
        base = image.sha256[:16] + EXTENSIONS.get((image.format or "").upper(), "")
    name = f"images/{base}"
    if name in taken:
        stem, dot, suffix = base.rpartition(".")
        base = f"{stem}-{image.sha256[:10]}.{suffix}" if dot else f"{base}-{image.sha256[:10]}"
        name = f"images/{base}"
    taken.add(name)
    return name


# ---------------------------------------------------------------- writers


def neutralise_formula(value: str) -> str:
    """A cell a spreadsheet would run as a formula gets a leading apostrophe."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def _json_line(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ExportError(f"a record cannot be written as JSON ({exc})") from None


class _Writer:
    """Receives records one by one; `close` finishes the file."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle

    def write(self, row: _Row, record: dict[str, Any], image: str | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def abort(self) -> None:
        """Release what the writer holds after a failure; the file is discarded anyway."""


class _JsonArrayWriter(_Writer):
    def __init__(self, handle: BinaryIO) -> None:
        super().__init__(handle)
        self.first = True
        handle.write(b"[")

    def _element(self, value: Any) -> None:
        self.handle.write(b"\n" if self.first else b",\n")
        self.handle.write(_json_line(value))
        self.first = False

    def write(self, row: _Row, record: dict[str, Any], image: str | None) -> None:
        self._element(record)

    def close(self) -> None:
        self.handle.write(b"]\n" if self.first else b"\n]\n")


class _JsonLinesWriter(_Writer):
    def write(self, row: _Row, record: dict[str, Any], image: str | None) -> None:
        self.handle.write(_json_line(record) + b"\n")


class _LlavaWriter(_JsonArrayWriter):
    def write(self, row: _Row, record: dict[str, Any], image: str | None) -> None:
        answer = record.get("answer")
        self._element(
            {
                "id": record["id"],
                "image": record["image"],
                "conversations": [
                    {"from": "human", "value": "<image>\n" + (record.get("full_question") or "")},
                    {"from": "gpt", "value": "" if answer is None else str(answer)},
                ],
            }
        )


class _MmbenchWriter(_Writer):
    def __init__(self, handle: BinaryIO, option_count: int, images: _ImageBytes) -> None:
        super().__init__(handle)
        self.letters = LETTERS[: max(option_count, 0)]
        self.images = images
        self.index = 0
        self.text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=True)
        self.csv = csv.writer(self.text, delimiter="\t", lineterminator="\n")
        self.csv.writerow(["index", "question", *self.letters, "answer", "category", "image",
                           "id"])

    def write(self, row: _Row, record: dict[str, Any], image: str | None) -> None:
        options = record.get("options") or {}
        category = (row.item.extra or {}).get("category")
        if not isinstance(category, str) or not category:
            category = row.item.question_type.value
        content = self.images.read(row.image, row.item.external_id)
        answer = record.get("answer")
        cells = [
            neutralise_formula(row.item.question),
            *(neutralise_formula(str(options.get(letter, ""))) for letter in self.letters),
            neutralise_formula("" if answer is None else str(answer)),
            neutralise_formula(category),
        ]
        self.csv.writerow(
            [self.index, *cells, base64.b64encode(content).decode("ascii"),
             neutralise_formula(str(record["id"]))]
        )
        self.index += 1

    def close(self) -> None:
        self.text.flush()
        self.text.detach()

    def abort(self) -> None:
        self.text.detach()


class _ParquetWriter(_Writer):
    COLUMNS = ("id", "question", "question_type", "answer", "options", "correct_option",
               "full_question", "explanation", "status", "extra")

    def __init__(self, handle: BinaryIO, images: _ImageBytes, batch: int = PAGE_SIZE) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(handle)
        self.pa = pa
        self.images = images
        self.batch = batch
        self.schema = pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("image", pa.struct([pa.field("bytes", pa.binary()),
                                             pa.field("path", pa.string())])),
                pa.field("question", pa.string()),
                pa.field("question_type", pa.string()),
                pa.field("answer", pa.string()),
                pa.field("options", pa.string()),  # JSON object {"A": ...}
                pa.field("correct_option", pa.string()),
                pa.field("full_question", pa.string()),
                pa.field("explanation", pa.string()),
                pa.field("status", pa.string()),
                pa.field("extra", pa.string()),  # JSON object of the kept input fields
            ]
        )
        self.writer = pq.ParquetWriter(handle, self.schema, compression="zstd")
        self.pending: list[dict[str, Any]] = []

    def write(self, row: _Row, record: dict[str, Any], image: str | None) -> None:
        answer = record.get("answer")
        self.pending.append(
            {
                "id": str(record["id"]),
                "image": {"bytes": self.images.read(row.image, row.item.external_id),
                          "path": image},
                "question": record["question"],
                "question_type": record["question_type"],
                "answer": None if answer is None else str(answer),
                "options": _json_line(record.get("options") or {}).decode("utf-8"),
                "correct_option": record.get("correct_option"),
                "full_question": record.get("full_question"),
                "explanation": record.get("explanation"),
                "status": row.item.status.value,
                "extra": _json_line(row.item.extra or {}).decode("utf-8"),
            }
        )
        if len(self.pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(self.pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def close(self) -> None:
        self._flush()
        self.writer.close()

    def abort(self) -> None:
        self.pending = []
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - the half-written file is deleted next
            pass


# ---------------------------------------------------------------- export


@dataclass(frozen=True)
class _Plan:
    dataset_id: int
    dataset_name: str
    fmt: ExportFormat
    statuses: tuple[ItemStatus, ...]
    image_mode: ImageMode
    inner_name: str
    page_size: int
    data: Path


def _begin_snapshot(database: Database, session: Session) -> None:
    if not database.is_sqlite:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def _write_records(
    session: Session,
    plan: _Plan,
    handle: BinaryIO,
    archive_names: dict[int, str] | None,
    total: int,
    progress: Progress | None,
) -> int:
    images = _ImageBytes(plan.data)
    writer: _Writer
    if plan.fmt is ExportFormat.JSON:
        writer = _JsonArrayWriter(handle)
    elif plan.fmt is ExportFormat.JSONL:
        writer = _JsonLinesWriter(handle)
    elif plan.fmt is ExportFormat.LLAVA:
        writer = _LlavaWriter(handle)
    elif plan.fmt is ExportFormat.MMBENCH_TSV:
        widest = _max_options(session, plan.dataset_id, plan.statuses)
        writer = _MmbenchWriter(handle, widest, images)
    else:
        writer = _ParquetWriter(handle, images, plan.page_size)
    written = 0
    try:
        for page in _rows(session, plan.dataset_id, plan.statuses, plan.page_size):
            for row in page:
                record = row.record()
                if archive_names is not None:
                    reference: str | None = archive_names[row.image.id]
                elif plan.image_mode is ImageMode.EMBEDDED and not plan.fmt.embeds_images:
                    content = images.read(row.image, row.item.external_id)
                    encoded = base64.b64encode(content).decode("ascii")
                    reference = f"data:{_mime(row.image)};base64,{encoded}"
                else:
                    reference = row.item.image_ref
                record["image"] = reference
                writer.write(row, record, reference)
                written += 1
            if progress is not None:
                progress(written, total)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return written


def _write_zip(
    session: Session, plan: _Plan, handle: BinaryIO, total: int, progress: Progress | None,
    scratch: Path,
) -> int:
    archive_names: dict[int, str] = {}
    taken: set[str] = set()
    with zipfile.ZipFile(handle, "w", allowZip64=True) as archive:
        for image in _distinct_images(session, plan.dataset_id, plan.statuses):
            name = _archive_name(image, taken)
            archive_names[image.id] = name
            path = _image_path(plan.data, image)
            if not path.is_file():
                raise ExportError(
                    f"image file {path} is missing; restore the data dir or export with "
                    "image names only"
                )
            archive.write(path, name, compress_type=zipfile.ZIP_STORED)
        session.expunge_all()
        inner = scratch / f".{uuid.uuid4().hex}{plan.fmt.extension}.part"
        try:
            with inner.open("wb") as inner_handle:
                written = _write_records(session, plan, inner_handle, archive_names, total,
                                         progress)
            archive.write(inner, plan.inner_name, compress_type=zipfile.ZIP_DEFLATED)
        finally:
            inner.unlink(missing_ok=True)
    return written


def _resolve_dataset(session: Session, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise ExportError(f"dataset {dataset_id} does not exist; pick one from the list")
    return dataset


def _nothing_selected(dataset: Dataset, selection: ExportSelection,
                      counts: dict[ItemStatus, int]) -> ExportError:
    summary = ", ".join(f"{count} {status.value}" for status, count in counts.items() if count)
    return ExportError(
        f"nothing to export: dataset {dataset.name!r} has no items matching '{selection.value}' "
        f"({summary or 'it is empty'}); accept items on the Review page or choose a wider "
        "selection"
    )


def _inner_name(destination: Path | BinaryIO, dataset_name: str, fmt: ExportFormat) -> str:
    if isinstance(destination, (str, os.PathLike)):
        stem = Path(destination).stem
    else:
        stem = _file_stem(dataset_name)
    return stem + fmt.extension


def export_dataset(
    database: Database,
    dataset_id: int,
    destination: Path | BinaryIO,
    *,
    fmt: ExportFormat = ExportFormat.JSON,
    selection: ExportSelection = ExportSelection.ACCEPTED,
    image_mode: ImageMode = ImageMode.FILE_NAMES,
    progress: Progress | None = None,
    page_size: int = PAGE_SIZE,
    data: Path | None = None,
) -> ExportSummary:
    """Write the selected items of a dataset to a file (atomically) or a binary stream.

    A stream receives the bytes only once the export has succeeded (it is assembled in a
    temporary file first). `progress(done, total)` is called after every page. Image files
    are read from `data` (default: the data dir), where ingest stored them.
    """
    fmt, selection, image_mode = ExportFormat(fmt), ExportSelection(selection), ImageMode(image_mode)
    started = time.perf_counter()
    to_path = isinstance(destination, (str, os.PathLike))
    target = Path(destination) if to_path else None  # type: ignore[arg-type]
    if target is not None:
        target = target.expanduser().resolve()
        if target.is_dir():
            raise ExportError(f"{target} is a directory; give a file name to export to")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(
                f"cannot create the folder {target.parent} ({exc.strerror}); choose another place"
            ) from None
    scratch = target.parent if target is not None else Path(tempfile.gettempdir())
    temporary = scratch / f".{(target.name if target else 'export')}.{uuid.uuid4().hex}.part"

    try:
        with database.read() as session:
            _begin_snapshot(database, session)
            dataset = _resolve_dataset(session, dataset_id)
            statuses = selection.statuses
            total = _count(session, dataset_id, statuses)
            if total == 0:
                raise _nothing_selected(dataset, selection, status_counts(session, dataset_id))
            plan = _Plan(dataset_id, dataset.name, fmt, statuses, image_mode,
                         _inner_name(destination, dataset.name, fmt), max(page_size, 1),
                         Path(data) if data is not None else data_dir())
            with temporary.open("wb") as handle:
                if image_mode is ImageMode.ZIP:
                    written = _write_zip(session, plan, handle, total, progress, scratch)
                else:
                    written = _write_records(session, plan, handle, None, total, progress)
                handle.flush()
                os.fsync(handle.fileno())
        size = temporary.stat().st_size
        if target is not None:
            os.replace(temporary, target)
        else:
            with temporary.open("rb") as source:
                shutil.copyfileobj(source, destination)  # type: ignore[arg-type]
            temporary.unlink()
    except VQAError:
        temporary.unlink(missing_ok=True)
        raise
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        where = target or "the export stream"
        raise ExportError(
            f"cannot write {where} ({exc.strerror or type(exc).__name__}); check free space and "
            "permissions, or choose another place"
        ) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return ExportSummary(items=written, path=target, bytes=size,
                         seconds=time.perf_counter() - started)


def export_preview(
    database: Database, dataset_id: int, selection: ExportSelection = ExportSelection.ACCEPTED
) -> ExportPreview:
    """How many items an export would hold and how often each letter is the correct one."""
    selection = ExportSelection(selection)
    with database.read() as session:
        count = _count(session, dataset_id, selection.statuses)
        letters = letter_histogram(
            session, dataset_id, selection.statuses if selection.statuses else None
        )
    return ExportPreview(count, letters)


def _file_stem(dataset_name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", dataset_name).strip("._") or "export"


def _file_extension(fmt: ExportFormat, image_mode: ImageMode) -> str:
    return ".zip" if ImageMode(image_mode) is ImageMode.ZIP else ExportFormat(fmt).extension


def default_file_name(dataset_name: str, fmt: ExportFormat, image_mode: ImageMode) -> str:
    """A file name for the download button or the exports folder."""
    return _file_stem(dataset_name) + _file_extension(fmt, image_mode)


def default_export_path(dataset_name: str, fmt: ExportFormat, image_mode: ImageMode,
                        *, data: Path | None = None) -> Path:
    """`<data dir>/exports/<dataset>-<UTC time>.<ext>`: where large exports are kept."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = (Path(data) if data is not None else data_dir()) / "exports"
    return folder / f"{_file_stem(dataset_name)}-{stamp}{_file_extension(fmt, image_mode)}"
