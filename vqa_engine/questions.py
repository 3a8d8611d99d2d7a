"""Read a question file into rows, or say precisely which rows are wrong and why.

A curator's file is JSON (an array of objects), JSONL (one object per line) or CSV (UTF-8,
with or without a byte-order mark). Each row needs `question`, `question_type`
(`multiple_choice` | `fill_in_blank`, or a dataset-level default) and `image`; `id` is
optional; every other field is kept verbatim so an export can hand it back unchanged.

The reader never stops at the first mistake: it collects every bad row (file, row or line,
field, reason) so one round of fixes is enough. The file is untrusted, so sizes, nesting
depth and field lengths are capped and non-standard JSON (NaN, Infinity, duplicate keys)
is refused instead of silently becoming a float or losing a value.

Row numbers are what an editor shows: the line number in JSONL and CSV (the CSV header is
line 1), the 1-based position of the object in a JSON array.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.models import QuestionType
from vqa_engine.errors import IngestError, InputError, Problem
from vqa_engine.image_sources import format_size, is_data_url

_MB = 1024 * 1024

QUESTION = "question"
QUESTION_TYPE = "question_type"
IMAGE = "image"
ID = "id"
KNOWN_FIELDS = (ID, QUESTION, QUESTION_TYPE, IMAGE)
TYPE_NAMES = ", ".join(t.value for t in QuestionType)


@dataclass(frozen=True)
class QuestionLimits:
    max_file_bytes: int = 200 * _MB
    max_rows: int = 1_000_000
    max_json_depth: int = 20  # nesting inside one row, counting the row object itself
    max_field_chars: int = 100_000  # any text field, except an inline image
    max_image_field_chars: int = 70 * _MB  # an `image` field may be a base64 data: URL


@dataclass(frozen=True)
class QuestionRow:
    """One valid row. `external_id` is the file's `id`, or a stable one made from the row."""

    row: int
    external_id: str
    question: str
    question_type: QuestionType
    image_ref: str
    extra: dict[str, Any] = field(default_factory=dict)
    id_generated: bool = False


class _RowError(Exception):
    def __init__(self, row: int | None, reason: str, field_name: str | None = None) -> None:
        super().__init__(reason)
        self.row = row
        self.field_name = field_name
        self.reason = reason


def parse_question_type(
    value: str | QuestionType | None, *, what: str = "question_type",
) -> QuestionType | None:
    """`multiple_choice` / `fill_in_blank` (case, spaces and dashes forgiven); None if empty."""
    if value is None or isinstance(value, QuestionType):
        return value
    text = str(value).strip().lower().replace("-", "_").replace(" ", "_")
    if not text:
        return None
    try:
        return QuestionType(text)
    except ValueError:
        raise InputError(f"unknown {what} '{value}'; use one of: {TYPE_NAMES}") from None


# --- reading the three formats into (row number, raw dict) pairs -------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; write null or a number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key '{key}' appears twice in one object")
        result[key] = value
    return result


def _json_loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in current.values())
        elif isinstance(current, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in current)
    return deepest


def _json_problem(exc: Exception, what: str, *, one_line: bool = False) -> str:
    if isinstance(exc, json.JSONDecodeError):
        where = f"column {exc.colno}" if one_line else f"line {exc.lineno}, column {exc.colno}"
        return (
            f"malformed {what}: {exc.msg} at {where}; "
            "fix the syntax (a validator such as `python -m json.tool FILE` shows it)"
        )
    if isinstance(exc, RecursionError):
        return f"malformed {what}: nested too deeply to read"
    return f"malformed {what}: {exc}"


def _iter_json_array(path: Path, limits: QuestionLimits) -> Iterator[tuple[int, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _RowError(None, _encoding_reason(exc, path)) from None
    if not text.strip():
        raise _RowError(None, _EMPTY)
    try:
        document = _json_loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{") and exc.msg == "Extra data":
            # One object per line in a .json file: read it as the JSONL it is.
            yield from _iter_jsonl_lines(io.StringIO(text), limits)
            return
        raise _RowError(None, _json_problem(exc, "JSON")) from None
    except (ValueError, RecursionError) as exc:
        raise _RowError(None, _json_problem(exc, "JSON")) from None
    if isinstance(document, dict) and QUESTION in document:
        yield 1, document
        return
    if not isinstance(document, list):
        found = f"an object with keys {', '.join(list(document)[:5])}" if isinstance(
            document, dict) else f"a JSON {type(document).__name__}"
        raise _RowError(
            None, f"expected a JSON array of question objects, found {found}; "
            "put the questions in a top-level [...] array",
        )
    yield from enumerate(document, start=1)


def _iter_jsonl_lines(stream: io.TextIOBase, limits: QuestionLimits) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        if len(line) > limits.max_image_field_chars + limits.max_field_chars * 10:
            yield number, _RowError(number, "the line is too long to be one question")
            continue
        try:
            yield number, _json_loads(line.rstrip())
        except (ValueError, RecursionError) as exc:
            yield number, _RowError(
                number, _json_problem(exc, "JSON on this line", one_line=True),
            )


def _iter_jsonl(path: Path, limits: QuestionLimits) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8-sig", newline=None) as stream:
        try:
            yield from _iter_jsonl_lines(stream, limits)
        except UnicodeDecodeError as exc:
            raise _RowError(None, _encoding_reason(exc, path)) from None


def _iter_csv(path: Path, limits: QuestionLimits, need_type: bool) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(max(csv.field_size_limit(), limits.max_image_field_chars + 1))
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as stream:
        try:
            reader = csv.reader(stream, delimiter=delimiter)
            header = next(reader, None)
            if header is None or not any(cell.strip() for cell in header):
                raise _RowError(None, _EMPTY)
            names = [cell.strip() for cell in header]
            columns = _csv_columns(names, need_type)
            end_of_previous = reader.line_num
            for cells in reader:
                number = end_of_previous + 1  # where the record starts, even if it spans lines
                end_of_previous = reader.line_num
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(names):
                    yield number, _RowError(
                        number,
                        f"has {len(cells)} fields but the header has {len(names)}; "
                        "quote fields that contain commas",
                    )
                    continue
                yield number, {columns[i]: cell for i, cell in enumerate(cells)}
        except csv.Error as exc:
            raise _RowError(reader.line_num or None, f"malformed CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise _RowError(None, _encoding_reason(exc, path)) from None


def _csv_columns(names: list[str], need_type: bool) -> list[str]:
    """Header cells as row keys: the known columns matched case-insensitively."""
    columns = [name.lower() if name.lower() in KNOWN_FIELDS else name for name in names]
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise _RowError(1, f"the header names column '{column}' twice; rename one of them")
        seen.add(column)
    required = [QUESTION, IMAGE] + ([QUESTION_TYPE] if need_type else [])
    missing = [c for c in required if c not in seen]
    if missing:
        hint = (
            "; or set a default question type for the dataset (--question-type)"
            if missing == [QUESTION_TYPE] else ""
        )
        raise _RowError(
            1,
            f"missing required column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing)}; found columns: "
            f"{', '.join(repr(n) for n in names)}. The header needs "
            f"{', '.join(required)} (id optional){hint}",
        )
    return columns


_EMPTY = "the file is empty; it must hold at least one question (JSON array, JSONL or CSV)"


def _encoding_reason(exc: UnicodeDecodeError, path: Path) -> str:
    line = 1
    try:
        with open(path, "rb") as stream:
            line = stream.read(exc.start if isinstance(exc.start, int) else 0).count(b"\n") + 1
    except OSError:
        pass
    return (
        f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} near line {line}); "
        "save the file as UTF-8"
    )


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".csv", ".tsv"):
        return "csv"
    with open(path, "rb") as stream:
        head = stream.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        return "jsonl"
    return "csv"


# --- validating rows --------------------------------------------------------------------


def _text_field(record: dict[str, Any], name: str, row: int, limit: int,
                problems: list[Problem], file: str, *, required: bool) -> str | None:
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            state = "missing" if name not in record else "empty"
            article = "an" if name[0] in "aeiou" else "a"
            problems.append(Problem(file, row, name, f"{state}; every row needs {article} {name}"))
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problems.append(Problem(
            file, row, name, f"must be text, found {type(value).__name__}",
        ))
        return None
    text = str(value).strip()
    if len(text) > limit:
        problems.append(Problem(
            file, row, name, f"is {len(text):,} characters long, above the limit of {limit:,}",
        ))
        return None
    return text


def _check_extra(record: dict[str, Any], row: int, limits: QuestionLimits,
                 problems: list[Problem], file: str) -> dict[str, Any]:
    extra = {k: v for k, v in record.items() if k not in KNOWN_FIELDS}
    for key, value in extra.items():
        if isinstance(value, str) and len(value) > limits.max_field_chars:
            problems.append(Problem(
                file, row, key,
                f"is {len(value):,} characters long, above the limit of {limits.max_field_chars:,}",
            ))
        elif isinstance(value, (dict, list)) and (
            len(json.dumps(value, ensure_ascii=False)) > limits.max_field_chars
        ):
            problems.append(Problem(
                file, row, key,
                f"is larger than the limit of {limits.max_field_chars:,} characters",
            ))
    return extra


def _external_id(
    record: dict[str, Any], row: int, problems: list[Problem], file: str,
) -> str | None:
    value = record.get(ID)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        problems.append(Problem(
            file, row, ID, f"must be text or a whole number, found {type(value).__name__}",
        ))
        return None
    text = str(value).strip()
    if len(text) > 200:
        problems.append(Problem(file, row, ID, "is longer than 200 characters"))
        return None
    return text


def parse_questions(
    path: Path | str,
    *,
    default_question_type: str | QuestionType | None = None,
    limits: QuestionLimits = QuestionLimits(),
    display_name: str | None = None,
) -> tuple[list[QuestionRow], list[Problem]]:
    """Every valid row and every problem; `read_questions` is the strict form."""
    path = Path(path)
    file = display_name or path.name
    default = parse_question_type(default_question_type, what="default question type")
    problems: list[Problem] = []
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        return [], [Problem(file, None, None, f"cannot be read ({exc.strerror or exc})")]
    if size == 0:
        return [], [Problem(file, None, None, _EMPTY)]
    if size > limits.max_file_bytes:
        return [], [Problem(
            file, None, None,
            f"the file is {format_size(size)}, above the limit of "
            f"{format_size(limits.max_file_bytes)}; split it into smaller files",
        )]
    kind = _detect_format(path)
    if kind == "json":
        records = _iter_json_array(path, limits)
    elif kind == "jsonl":
        records = _iter_jsonl(path, limits)
    else:
        records = _iter_csv(path, limits, need_type=default is None)

    drafts: list[tuple[int, str | None, str, QuestionType, str, dict[str, Any]]] = []
    count = 0
    try:
        for row, record in records:
            count += 1
            if count > limits.max_rows:
                problems.append(Problem(
                    file, row, None,
                    f"more than {limits.max_rows:,} questions; split the file",
                ))
                break
            if isinstance(record, _RowError):
                problems.append(Problem(file, record.row, record.field_name, record.reason))
                continue
            if not isinstance(record, dict):
                problems.append(Problem(
                    file, row, None,
                    f"expected an object with question, question_type and image, "
                    f"found {type(record).__name__}",
                ))
                continue
            draft = _validate(record, row, default, limits, problems, file)
            if draft is not None:
                drafts.append(draft)
    except _RowError as exc:
        problems.append(Problem(file, exc.row, exc.field_name, exc.reason))
        return [], problems
    if count == 0 and not problems:
        problems.append(Problem(file, None, None, "no questions: " + (
            "the file has a header but no rows" if kind == "csv" else "the file holds no rows"
        )))
    return _assign_ids(drafts, problems, file), problems


def _validate(
    record: dict[str, Any], row: int, default: QuestionType | None,
    limits: QuestionLimits, problems: list[Problem], file: str,
) -> tuple[int, str | None, str, QuestionType, str, dict[str, Any]] | None:
    before = len(problems)
    if _depth(record) > limits.max_json_depth:
        problems.append(Problem(
            file, row, None, f"nested deeper than {limits.max_json_depth} levels",
        ))
        return None
    external_id = _external_id(record, row, problems, file)
    question = _text_field(
        record, QUESTION, row, limits.max_field_chars, problems, file, required=True,
    )
    image = _text_field(
        record, IMAGE, row, limits.max_image_field_chars, problems, file, required=True,
    )
    if image is not None and not is_data_url(image) and len(image) > 1000:
        problems.append(Problem(
            file, row, IMAGE, "is longer than 1,000 characters and is not a data: URL",
        ))
    question_type = default
    raw_type = record.get(QUESTION_TYPE)
    if raw_type is not None and not isinstance(raw_type, str):
        problems.append(Problem(
            file, row, QUESTION_TYPE,
            f"must be text ({TYPE_NAMES}), found {type(raw_type).__name__}",
        ))
    else:
        try:
            question_type = parse_question_type(raw_type) or default
        except InputError as exc:
            problems.append(Problem(file, row, QUESTION_TYPE, str(exc)))
        else:
            if question_type is None:
                state = "missing" if QUESTION_TYPE not in record else "empty"
                problems.append(Problem(
                    file, row, QUESTION_TYPE,
                    f"{state}; use one of: {TYPE_NAMES}, or set a default question type "
                    "for the dataset (--question-type)",
                ))
    extra = _check_extra(record, row, limits, problems, file)
    if len(problems) > before:
        return None
    assert question is not None and image is not None and question_type is not None
    return row, external_id, question, question_type, image, extra


def _assign_ids(
    drafts: list[tuple[int, str | None, str, QuestionType, str, dict[str, Any]]],
    problems: list[Problem], file: str,
) -> list[QuestionRow]:
    first_row: dict[str, int] = {}
    for row, external_id, *_ in drafts:
        if external_id is None:
            continue
        if external_id in first_row:
            problems.append(Problem(
                file, row, ID,
                f"duplicate id '{external_id}', already used by row {first_row[external_id]}; "
                "ids must be unique within the file",
            ))
        else:
            first_row[external_id] = row
    rows: list[QuestionRow] = []
    taken = set(first_row)
    for row, external_id, question, question_type, image, extra in drafts:
        generated = external_id is None
        if generated:
            external_id = str(row)
            suffix = 1
            while external_id in taken:
                external_id = f"row-{row}" + (f"-{suffix}" if suffix > 1 else "")
                suffix += 1
            taken.add(external_id)
        rows.append(QuestionRow(
            row=row, external_id=external_id, question=question, question_type=question_type,
            image_ref=image, extra=extra, id_generated=generated,
        ))
    return rows


def read_questions(
    path: Path | str,
    *,
    default_question_type: str | QuestionType | None = None,
    limits: QuestionLimits = QuestionLimits(),
) -> list[QuestionRow]:
    """The rows of a question file; `IngestError` lists every bad row if there is one."""
    rows, problems = parse_questions(
        path, default_question_type=default_question_type, limits=limits,
    )
    if problems:
        raise IngestError(order_problems(problems))
    return rows


def order_problems(problems: list[Problem]) -> list[Problem]:
    """File-level problems first, then by row."""
    return sorted(problems, key=lambda p: (p.row is not None, p.row or 0))
