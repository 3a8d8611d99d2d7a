"""Browser uploads staged on disk before they are imported.

A question file and thousands of images arrive in a browser session; keeping them in the
session's memory until the curator presses "Import" would hold gigabytes per tab. Each
uploaded file is therefore copied, in chunks, into a staging folder under the data dir
(`uploads/<token>/`) the moment it arrives, and the import reads from there, exactly like
the command line reads from disk. A stage is discarded after a successful import; stages
left behind by closed tabs are swept after a day.

File names are reduced to their last path component and checked, so an upload can never
write outside its stage; the content itself is checked later, at ingest.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from db.models import QuestionType
from vqa_engine.errors import IngestError, InputError, Problem
from vqa_engine.questions import QuestionRow, read_questions

UPLOADS_DIR = "uploads"
ARCHIVE_SUFFIXES = frozenset({".zip"})
_CHUNK = 1024 * 1024
_GB = 1024 * 1024 * 1024
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class StageLimits:
    max_stage_bytes: int = 16 * _GB  # everything one curator stages for one import
    stale_after_seconds: float = 24 * 3600


def safe_file_name(name: str) -> str:
    """The last component of a browser-supplied name, or InputError if nothing usable is left."""
    base = PureWindowsPath(PurePosixPath(name).name).name.strip()
    if not base or base in (".", "..") or _UNSAFE_CHARS.search(base) or len(base) > 255:
        raise InputError(
            f"file name {name!r} cannot be stored; rename the file (letters, digits, dots) "
            "and upload it again"
        )
    return base


@dataclass
class UploadStage:
    """One curator's staged upload: at most one question file, any number of images/zips."""

    root: Path
    limits: StageLimits = field(default_factory=StageLimits)

    @classmethod
    def create(cls, data_dir: Path, limits: StageLimits | None = None) -> UploadStage:
        root = data_dir / UPLOADS_DIR / uuid.uuid4().hex
        root.mkdir(parents=True)
        return cls(root, limits or StageLimits())

    @classmethod
    def reopen(cls, data_dir: Path, token: str) -> UploadStage | None:
        """The stage `token` if it still exists (a token is never a path)."""
        if not _TOKEN.match(token):
            return None
        root = data_dir / UPLOADS_DIR / token
        return cls(root) if root.is_dir() else None

    @property
    def token(self) -> str:
        return self.root.name

    @property
    def _questions_dir(self) -> Path:
        return self.root / "questions"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def _archives_dir(self) -> Path:
        return self.root / "archives"

    def _copy(self, stream: BinaryIO, target: Path) -> int:
        budget = self.limits.max_stage_bytes - self.total_bytes
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        written = 0
        with partial.open("wb") as handle:
            while chunk := stream.read(_CHUNK):
                written += len(chunk)
                if written > budget:
                    handle.close()
                    partial.unlink()
                    raise InputError(
                        f"{target.name} does not fit: one import may stage at most "
                        f"{self.limits.max_stage_bytes // _GB} GB; import the rest as another "
                        "dataset or use `python -m vqa_engine import`"
                    )
                handle.write(chunk)
        partial.replace(target)
        self.root.touch()  # the sweep measures staleness from the last upload
        return written

    def put_questions(self, name: str, stream: BinaryIO) -> Path:
        """Stage the question file, replacing any earlier one."""
        target = self._questions_dir / safe_file_name(name)
        if self._questions_dir.exists():
            shutil.rmtree(self._questions_dir)
        self._copy(stream, target)
        return target

    def put_image(self, name: str, stream: BinaryIO) -> Path:
        """Stage one image or zip; a file of the same name is replaced."""
        base = safe_file_name(name)
        folder = self._archives_dir if Path(base).suffix.lower() in ARCHIVE_SUFFIXES else self.images_dir
        target = folder / base
        self._copy(stream, target)
        return target

    @property
    def questions_path(self) -> Path | None:
        if not self._questions_dir.is_dir():
            return None
        return next((p for p in sorted(self._questions_dir.iterdir()) if p.is_file()), None)

    def image_files(self) -> list[Path]:
        """Single images staged (not archives)."""
        if not self.images_dir.is_dir():
            return []
        return sorted(p for p in self.images_dir.iterdir() if p.is_file() and p.suffix != ".part")

    def archives(self) -> list[Path]:
        if not self._archives_dir.is_dir():
            return []
        return sorted(p for p in self._archives_dir.iterdir() if p.is_file() and p.suffix != ".part")

    def image_paths(self) -> list[Path]:
        """What ingest reads: the images folder (if any) and each zip."""
        paths = [self.images_dir] if self.image_files() else []
        return paths + self.archives()

    @property
    def total_bytes(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def clear_images(self) -> None:
        for folder in (self.images_dir, self._archives_dir):
            if folder.exists():
                shutil.rmtree(folder)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def sweep_stale_stages(data_dir: Path, limits: StageLimits | None = None) -> int:
    """Delete stages untouched for longer than the limit; returns how many went."""
    limits = limits or StageLimits()
    base = data_dir / UPLOADS_DIR
    if not base.is_dir():
        return 0
    cutoff = time.time() - limits.stale_after_seconds
    removed = 0
    for stage in base.iterdir():
        if stage.is_dir() and _TOKEN.match(stage.name) and stage.stat().st_mtime < cutoff:
            shutil.rmtree(stage, ignore_errors=True)
            removed += 1
    return removed


@dataclass(frozen=True)
class QuestionPreview:
    """What the upload form shows before importing: counts, first rows, every problem."""

    rows: int
    by_type: dict[str, int]
    first: list[QuestionRow]
    problems: list[Problem]
    image_refs: int

    @property
    def ok(self) -> bool:
        return not self.problems


def preview_questions(
    path: Path,
    *,
    default_question_type: QuestionType | None = None,
    shown: int = 20,
) -> QuestionPreview:
    """Parse the staged question file; problems are returned, not raised."""
    try:
        rows = read_questions(path, default_question_type=default_question_type)
    except IngestError as exc:
        return QuestionPreview(0, {}, [], exc.problems, 0)
    except InputError as exc:
        return QuestionPreview(0, {}, [], [Problem(path.name, None, None, str(exc))], 0)
    types = Counter(row.question_type.value for row in rows)
    return QuestionPreview(
        rows=len(rows),
        by_type=dict(types),
        first=rows[:shown],
        problems=[],
        image_refs=len({row.image_ref for row in rows}),
    )
