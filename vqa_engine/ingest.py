"""Import a question file and its images as a new dataset: everything, or nothing.

The order of work is what makes an ingest all-or-nothing and cheap to retry:

1. validate every row and find every image, collecting all problems;
2. prepare each distinct image in a process pool (workers read the upload from disk, write
   the original and its model-ready JPEG into a staging folder and return metadata only, so
   memory stays flat whatever the upload's size), collecting the bad images too;
3. if anything was wrong, raise one `IngestError` naming every problem and remove the
   staging folder: the database and the data dir are exactly as before;
4. otherwise move the staged files into their content-addressed places and insert the
   dataset, images and items in one write transaction; if that fails, the files this
   ingest moved are removed again (files that were there before are never touched).

Images are keyed by the sha256 of their original bytes: a picture already stored, or met
twice in one upload under different names, is stored once and counted as a duplicate.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from db.engine import Database, data_dir
from db.models import Dataset, Image, Item, QuestionType
from vqa_engine.errors import IngestError, InputError, Problem
from vqa_engine.image_sources import (
    ImageCatalog,
    ImageSource,
    SourceLimits,
    collect_images,
    decode_data_url,
    format_size,
    is_data_url,
)
from vqa_engine.images import ImageLimits, image_paths_for, stored_path
from vqa_engine.ingest_worker import (
    FailedResult,
    PreparedResult,
    PrepareTask,
    WorkerSettings,
    run_tasks,
    staged_paths,
)
from vqa_engine.questions import (
    QuestionLimits,
    QuestionRow,
    order_problems,
    parse_question_type,
    parse_questions,
)

Progress = Callable[[int, int], None]

STAGING_DIR = ".staging"
_IMAGE_REF_MAX = 1000  # the items.image_ref column
_IN_CHUNK = 500
_POOL_MIN_IMAGES = 8  # below this, starting processes costs more than it saves


@dataclass(frozen=True)
class IngestLimits:
    questions: QuestionLimits = field(default_factory=QuestionLimits)
    sources: SourceLimits = field(default_factory=SourceLimits)
    images: ImageLimits = field(default_factory=ImageLimits)
    tasks_in_flight_per_worker: int = 4  # bounds queued work, so a failure stops early


@dataclass(frozen=True)
class IngestSummary:
    """What an ingest stored. A duplicate is an image whose bytes were already stored, or
    met earlier in the same upload under another name; reusing one file for several rows
    is not a duplicate."""

    dataset_id: int
    dataset_name: str
    items: int
    images_stored: int
    duplicates_skipped: int
    seconds: float


# --- the staging folder and rollback of moved files -------------------------------------


class _Staging:
    """A private folder under the data dir, plus every directory this ingest created."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.created_dirs: list[Path] = []
        self.root = data / STAGING_DIR / f"ingest-{uuid.uuid4().hex}"
        self.make_dirs(self.root)
        self.moved: list[Path] = []

    def make_dirs(self, directory: Path) -> None:
        missing: list[Path] = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            self.created_dirs.append(path)

    def scratch_file(self, suffix: str) -> Path:
        inputs = self.root / "inputs"
        inputs.mkdir(exist_ok=True)
        return inputs / f"{uuid.uuid4().hex}{suffix}"

    def move_into_place(self, staged: Path, final: Path) -> None:
        if final.exists():
            return  # same bytes already stored (content-addressed): keep the existing file
        self.make_dirs(final.parent)
        os.replace(staged, final)
        self.moved.append(final)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._remove_empty(self.root.parent)
        if self.root.parent in self.created_dirs:
            self.created_dirs.remove(self.root.parent)

    def undo(self, keep: Callable[[Path], bool]) -> None:
        for path in reversed(self.moved):
            if not keep(path):
                path.unlink(missing_ok=True)
        self.moved.clear()
        for directory in sorted(self.created_dirs, key=lambda p: len(p.parts), reverse=True):
            self._remove_empty(directory)

    @staticmethod
    def _remove_empty(directory: Path) -> None:
        with contextlib.suppress(OSError):  # not empty: someone else's files are inside
            directory.rmdir()


# --- the ingest itself -------------------------------------------------------------------


@dataclass
class _Job:
    """One distinct image to prepare and the rows that use it."""

    source: ImageSource
    rows: list[int] = field(default_factory=list)  # indexes into the question rows


@dataclass
class _Plan:
    """The valid rows, the distinct images they use, and what preparing those gave."""

    rows: Sequence[QuestionRow]
    jobs: list[_Job] = field(default_factory=list)
    row_job: list[int | None] = field(default_factory=list)  # per row: its job's index
    prepared: dict[int, PreparedResult] = field(default_factory=dict)  # by job index

    def sha256_of_row(self, position: int) -> str:
        job = self.row_job[position]
        assert job is not None
        return self.prepared[job].sha256


def _name_taken(name: str) -> InputError:
    return InputError(
        f"a dataset named '{name}' already exists; choose another name "
        "(--dataset on the command line) or delete the existing dataset first"
    )


def _check_name(database: Database, name: str) -> None:
    with database.read() as session:
        if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
            raise _name_taken(name)


def _plan(
    rows: Sequence[QuestionRow], catalog: ImageCatalog, staging: _Staging,
    limits: IngestLimits, file: str, problems: list[Problem],
) -> _Plan:
    """Find each row's image; rows naming the same file or data: URL share one job."""
    plan = _Plan(rows)
    jobs, row_job = plan.jobs, plan.row_job
    by_key: dict[tuple[str, str | None], int] = {}
    for position, row in enumerate(rows):
        try:
            if is_data_url(row.image_ref):
                key = ("data:", hashlib.sha256(row.image_ref.encode()).hexdigest())
                if key not in by_key:
                    payload = decode_data_url(row.image_ref, limits.sources)
                    scratch = staging.scratch_file(".bin")
                    scratch.write_bytes(payload)
                    source = ImageSource(
                        path=scratch, relative=f"data-url-row-{row.row}",
                        display=f"the data: URL in row {row.row}",
                    )
                else:
                    source = jobs[by_key[key]].source
            else:
                source = catalog.resolve(row.image_ref)
                key = (str(source.path), source.member)
        except InputError as exc:
            problems.append(Problem(file, row.row, "image", str(exc)))
            row_job.append(None)
            continue
        if key not in by_key:
            by_key[key] = len(jobs)
            jobs.append(_Job(source))
        jobs[by_key[key]].rows.append(position)
        row_job.append(by_key[key])
    return plan


def _known_images(database: Database) -> frozenset[str]:
    with database.read() as session:
        return frozenset(session.scalars(select(Image.sha256)))


def _prepare_all(
    plan: _Plan, settings: WorkerSettings, known: frozenset[str], workers: int,
    limits: IngestLimits, file: str, problems: list[Problem], progress: Progress | None,
) -> None:
    """Prepare every job's image into `plan.prepared`; each bad one becomes a problem."""
    jobs = plan.jobs
    total = len(jobs)
    read_bytes = 0
    cap = limits.sources.max_upload_bytes
    over_cap = False
    if progress is not None:
        progress(0, total)
    tasks = [PrepareTask(index, job.source) for index, job in enumerate(jobs)]
    results = run_tasks(
        tasks, settings, known, workers, limits.tasks_in_flight_per_worker,
        should_stop=lambda: over_cap,
    )
    for done, result in enumerate(results, start=1):
        read_bytes += result.byte_size
        if read_bytes > cap and not over_cap:
            over_cap = True
            problems.append(Problem(
                file, None, None,
                f"the images add up to more than the {format_size(cap)} upload limit "
                "(counted while reading and extracting); split the upload into several "
                "datasets or raise the limit",
            ))
        if isinstance(result, FailedResult):
            job = jobs[result.index]
            for position in job.rows:
                problems.append(Problem(
                    file, plan.rows[position].row, "image", f"{job.source.label}: {result.reason}",
                ))
        else:
            plan.prepared[result.index] = result
        if progress is not None:
            progress(done, total)


def _worker_count(requested: int | None, jobs: int) -> int:
    if requested is None:
        if jobs < _POOL_MIN_IMAGES:
            return 1
        requested = os.cpu_count() or 1
    return max(1, min(requested, jobs))


def _image_ref_for_storage(ref: str, sha256: str) -> str:
    if len(ref) <= _IMAGE_REF_MAX:
        return ref
    header = ref.split(",", 1)[0][:100]  # an inline data: URL; its bytes are the stored original
    return f"{header},sha256:{sha256}"


def _chunks(values: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _commit(
    database: Database, data: Path, staging: _Staging, dataset: Dataset, plan: _Plan,
) -> tuple[int, int, int]:
    """Move files into place and insert every row; returns (dataset id, stored, duplicates)."""
    prepared = plan.prepared
    first_for_sha: dict[str, int] = {}  # new image -> the first job that staged it
    duplicates = 0
    for index in range(len(plan.jobs)):
        result = prepared[index]
        if not result.staged or result.sha256 in first_for_sha:
            duplicates += 1
        if result.staged:
            first_for_sha.setdefault(result.sha256, index)

    for sha256, index in first_for_sha.items():
        result = prepared[index]
        staged_original, staged_jpeg = staged_paths(staging.root, sha256, result.ext)
        original_rel, prepared_rel = image_paths_for(sha256, result.ext)
        staging.move_into_place(staged_original, stored_path(data, original_rel))
        staging.move_into_place(staged_jpeg, stored_path(data, prepared_rel))

    try:
        return _insert_rows(database, dataset, plan, first_for_sha, duplicates)
    except IntegrityError:
        # Only a concurrent import can get here (same name or same new image, on a
        # database that does not serialise writers); retrying sees its result.
        raise InputError(
            f"another import stored the dataset name '{dataset.name}' or some of the same "
            "images at the same moment; nothing was imported, run the import again"
        ) from None


def _insert_rows(
    database: Database, dataset: Dataset, plan: _Plan, first_for_sha: dict[str, int],
    duplicates: int,
) -> tuple[int, int, int]:
    prepared, jobs = plan.prepared, plan.jobs
    all_shas = sorted({result.sha256 for result in prepared.values()})
    with database.write() as session:
        if session.scalar(select(Dataset.id).where(Dataset.name == dataset.name)) is not None:
            raise _name_taken(dataset.name)
        image_ids: dict[str, int] = {}
        for chunk in _chunks(all_shas):
            image_ids.update(session.execute(
                select(Image.sha256, Image.id).where(Image.sha256.in_(chunk))
            ).all())
        new_images: list[dict[str, Any]] = []
        for sha256, index in first_for_sha.items():
            if sha256 in image_ids:
                duplicates += 1  # stored by a concurrent ingest since we looked
                continue
            result = prepared[index]
            original_rel, prepared_rel = image_paths_for(sha256, result.ext)
            new_images.append({
                "sha256": sha256,
                "original_name": jobs[index].source.name[:500],
                "original_path": original_rel,
                "prepared_path": prepared_rel,
                "format": result.format,
                "width": result.width,
                "height": result.height,
                "byte_size": result.byte_size,
                "prepared_width": result.prepared_width,
                "prepared_height": result.prepared_height,
                "prepared_byte_size": result.prepared_byte_size,
                "prepared_quality": result.quality,
            })
        if new_images:
            image_ids.update(session.execute(
                insert(Image).returning(Image.sha256, Image.id), new_images,
            ).all())
        session.add(dataset)
        session.flush()
        items: list[dict[str, Any]] = []
        for position, row in enumerate(plan.rows):
            sha256 = plan.sha256_of_row(position)
            if sha256 not in image_ids:
                raise InputError(
                    f"image '{row.image_ref[:100]}' was removed from the database during the "
                    "import; run the import again"
                )
            items.append({
                "dataset_id": dataset.id,
                "position": position,
                "external_id": row.external_id,
                "question": row.question,
                "question_type": row.question_type,
                "image_id": image_ids[sha256],
                "image_ref": _image_ref_for_storage(row.image_ref, sha256),
                "extra": row.extra,
            })
        if items:
            session.execute(insert(Item), items)
        return dataset.id, len(new_images), duplicates


def _referenced(database: Database) -> Callable[[Path], bool]:
    """After a failed commit: is a moved file now used by an image another ingest stored?"""

    def keep(path: Path) -> bool:
        sha256 = path.name.split(".", 1)[0]
        try:
            with database.read() as session:
                return session.scalar(select(Image.id).where(Image.sha256 == sha256)) is not None
        except Exception:  # noqa: BLE001 - the database is what just failed; restore the files
            return False

    return keep


def ingest_dataset(
    database: Database,
    questions_path: Path | str,
    image_paths: Iterable[Path | str],
    dataset_name: str,
    *,
    default_question_type: str | QuestionType | None = None,
    data: Path | None = None,
    limits: IngestLimits = IngestLimits(),
    progress: Progress | None = None,
    workers: int | None = None,
) -> IngestSummary:
    """Store a question file and its images as a new dataset, or raise and store nothing.

    `IngestError` lists every bad row and image; `InputError` is raised for a dataset name
    that is empty or already taken. `progress(done, total)` is called as images are
    prepared, from the calling thread. `workers` defaults to every core (no pool for a
    handful of images); 1 means no pool.
    """
    started = time.perf_counter()
    data = Path(data) if data is not None else data_dir()
    name = dataset_name.strip()
    if not name:
        raise InputError("the dataset name is empty; give one (--dataset NAME)")
    if len(name) > 200:
        raise InputError(f"the dataset name is {len(name)} characters long; use at most 200")
    _check_name(database, name)

    questions_path = Path(questions_path)
    file = questions_path.name
    rows, problems = parse_questions(
        questions_path, default_question_type=default_question_type, limits=limits.questions,
    )
    default_type = parse_question_type(default_question_type, what="default question type")
    catalog = collect_images(image_paths, limits.sources)
    problems.extend(catalog.problems)

    staging = _Staging(data)
    committed = False
    try:
        plan = _plan(rows, catalog, staging, limits, file, problems)
        settings = WorkerSettings(staging.root, limits.sources, limits.images)
        _prepare_all(
            plan, settings, _known_images(database), _worker_count(workers, len(plan.jobs)),
            limits, file, problems, progress,
        )
        if problems:
            raise IngestError(order_problems(problems))
        if not rows:
            raise IngestError([Problem(file, None, None, "no questions to import")])
        try:
            dataset = Dataset(name=name, default_question_type=default_type, source_name=file)
            dataset_id, stored, duplicates = _commit(database, data, staging, dataset, plan)
        except BaseException:
            staging.undo(keep=_referenced(database))
            raise
        committed = True
    finally:
        staging.discard()
        if not committed:
            staging.undo(keep=lambda _path: False)
    return IngestSummary(
        dataset_id=dataset_id,
        dataset_name=name,
        items=len(rows),
        images_stored=stored,
        duplicates_skipped=duplicates,
        seconds=time.perf_counter() - started,
    )

