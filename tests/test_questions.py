"""Question files: three formats read alike, and every bad row named with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from db.models import QuestionType
from vqa_engine.errors import IngestError, InputError, Problem
from vqa_engine.questions import QuestionLimits, parse_questions, read_questions

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo"
MC, FIB = QuestionType.MULTIPLE_CHOICE, QuestionType.FILL_IN_BLANK


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def problems_of(path: Path, **options: object) -> list[Problem]:
    with pytest.raises(IngestError) as caught:
        read_questions(path, **options)  # type: ignore[arg-type]
    return caught.value.problems


def one_problem(path: Path, **options: object) -> Problem:
    problems = problems_of(path, **options)
    assert len(problems) == 1, problems
    return problems[0]


def jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    return write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def row(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "question": "What is it?",
        "question_type": "fill_in_blank",
        "image": "a.png",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


# --- the three formats -------------------------------------------------------------------


def test_demo_json_jsonl_and_csv_read_to_the_same_questions() -> None:
    def essence(path: Path) -> list[tuple[object, ...]]:
        return [
            (r.external_id, r.question, r.question_type, r.image_ref, r.extra)
            for r in read_questions(path)
        ]

    from_json = essence(DEMO / "questions.json")
    assert len(from_json) == 12
    assert essence(DEMO / "questions.jsonl") == from_json
    assert essence(DEMO / "questions.csv") == from_json


def test_rows_keep_order_types_chinese_text_and_extra_fields_verbatim() -> None:
    rows = read_questions(DEMO / "questions.json")
    assert [r.row for r in rows] == list(range(1, 13))
    assert rows[1].question == "图中蓝色的图形是什么形状？"
    assert rows[1].question_type is FIB and rows[0].question_type is MC
    assert rows[2].extra == {"category": "counting", "language": "en", "reference_answer": "5"}
    assert rows[10].image_ref.startswith("data:image/png;base64,")


def test_csv_rows_are_numbered_by_line_with_the_header_as_line_1(tmp_path: Path) -> None:
    rows = read_questions(DEMO / "questions.csv")
    assert [r.row for r in rows][:2] == [2, 3]


def test_csv_with_a_byte_order_mark_reads_like_without(tmp_path: Path) -> None:
    text = "id,question,question_type,image\nq1,图里有什么？,fill_in_blank,a.png\n"
    plain = read_questions(write(tmp_path / "plain.csv", text))
    bom = read_questions(write(tmp_path / "bom.csv", "\ufeff" + text))
    assert plain == bom
    assert bom[0].external_id == "q1"


def test_csv_header_names_are_matched_case_and_space_insensitively(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.csv", " Question ,IMAGE,Question_Type,Notes\nHi?,a.png,multiple_choice,x\n"
    )
    [only] = read_questions(path)
    assert only.question == "Hi?" and only.image_ref == "a.png" and only.extra == {"Notes": "x"}


def test_json_file_holding_one_object_per_line_is_read_as_jsonl(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "q.json", [row(id="a"), row(id="b")])
    assert [r.external_id for r in read_questions(path)] == ["a", "b"]


def test_extension_less_file_is_recognised_by_content(tmp_path: Path) -> None:
    path = write(tmp_path / "questions", json.dumps([row(id="x")]))
    assert read_questions(path)[0].external_id == "x"


def test_nested_extra_fields_numbers_and_nulls_are_kept_verbatim(tmp_path: Path) -> None:
    extra = {"meta": {"source": "synthetic", "tags": ["a", 1]}, "score": 0.5, "note": None}
    path = write(tmp_path / "q.json", json.dumps([row(**extra)]))
    assert read_questions(path)[0].extra == extra


def test_question_type_spelling_is_forgiven(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "q.jsonl",
        [row(question_type="Multiple-Choice"), row(question_type="fill in blank")],
    )
    assert [r.question_type for r in read_questions(path)] == [MC, FIB]


def test_default_question_type_fills_rows_without_one_but_never_overrides(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "q.jsonl", [row(question_type=_DROP), row(question_type="fill_in_blank")]
    )
    rows = read_questions(path, default_question_type="multiple_choice")
    assert [r.question_type for r in rows] == [MC, FIB]


def test_csv_without_a_type_column_is_accepted_with_a_default(tmp_path: Path) -> None:
    path = write(tmp_path / "q.csv", "question,image\nWhat?,a.png\n")
    assert read_questions(path, default_question_type=MC)[0].question_type is MC


def test_unknown_default_question_type_is_refused() -> None:
    with pytest.raises(InputError, match="unknown default question type 'essay'"):
        read_questions(DEMO / "questions.json", default_question_type="essay")


def test_rows_without_id_get_their_row_number_unless_another_row_uses_it(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "q.jsonl", [row(), row(id="1"), row(id=""), row(id=7)])
    rows = read_questions(path)
    assert [r.external_id for r in rows] == ["row-1", "1", "3", "7"]
    assert [r.id_generated for r in rows] == [True, False, True, False]


# --- every bad input is named with file, row, field and reason ---------------------------


@pytest.mark.parametrize("content", ["", "   \n\n", "\ufeff"])
@pytest.mark.parametrize("name", ["q.json", "q.jsonl", "q.csv"])
def test_empty_file_is_refused(tmp_path: Path, name: str, content: str) -> None:
    problem = one_problem(write(tmp_path / name, content))
    assert problem.file == name and problem.row is None
    assert "empty" in problem.reason or "no questions" in problem.reason


def test_empty_json_array_and_header_only_csv_say_there_are_no_questions(tmp_path: Path) -> None:
    assert "holds no rows" in one_problem(write(tmp_path / "q.json", "[]")).reason
    header_only = one_problem(write(tmp_path / "q.csv", "question,question_type,image\n"))
    assert "header but no rows" in header_only.reason


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "q.json", '[\n  {"question": "a",\n   "image": }\n]')
    problem = one_problem(path)
    assert problem.file == "q.json"
    assert problem.reason.startswith("malformed JSON: Expecting value at line 3, column 13")


def test_top_level_json_object_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "q.json", json.dumps({"questions": [row()]}, indent=1))
    assert (
        "expected a JSON array of question objects, found an object with keys questions"
        in one_problem(path).reason
    )


def test_malformed_jsonl_line_is_reported_by_line_number_and_other_rows_still_checked(
    tmp_path: Path,
) -> None:
    lines = [
        json.dumps(row(id="a")),
        "",
        '{"question": "b", "image": "b.png"',
        json.dumps(row(id="a")),
    ]
    problems = problems_of(write(tmp_path / "q.jsonl", "\n".join(lines) + "\n"))
    assert [(p.row, p.field) for p in problems] == [(3, None), (4, "id")]
    assert problems[0].reason.startswith(
        "malformed JSON on this line: Expecting ',' delimiter at column 35"
    )
    assert "duplicate id 'a', already used by row 1" in problems[1].reason


def test_csv_missing_required_columns_lists_them_and_the_columns_found(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path / "q.csv", "id,text,question_type\n1,hi,fill_in_blank\n"))
    assert problem.row == 1
    assert (
        "missing required columns 'question', 'image'; found columns: 'id', 'text', "
        "'question_type'" in problem.reason
    )


def test_csv_missing_only_the_type_column_suggests_a_default(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path / "q.csv", "question,image\nhi,a.png\n"))
    assert "missing required column 'question_type'" in problem.reason
    assert "--question-type" in problem.reason


def test_csv_row_with_the_wrong_number_of_fields_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "q.csv", "question,question_type,image\nA, b?,fill_in_blank,a.png\n")
    problem = one_problem(path)
    assert (problem.row, problem.reason) == (
        2,
        "has 4 fields but the header has 3; quote fields that contain commas",
    )


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"question": _DROP}, "question", "missing; every row needs a question"),
        ({"question": "   "}, "question", "empty; every row needs a question"),
        ({"question": ["a"]}, "question", "must be text, found list"),
        ({"image": _DROP}, "image", "missing; every row needs an image"),
        ({"image": ""}, "image", "empty; every row needs an image"),
        (
            {"question_type": "true_false"},
            "question_type",
            "unknown question_type 'true_false'; use one of: multiple_choice, fill_in_blank",
        ),
        ({"question_type": _DROP}, "question_type", "missing; use one of: multiple_choice"),
        ({"question_type": 3}, "question_type", "must be text"),
        ({"id": 1.5}, "id", "must be text or a whole number, found float"),
    ],
)
def test_bad_field_is_named_with_its_row_and_reason(
    tmp_path: Path,
    fields: dict[str, object],
    field: str,
    reason: str,
) -> None:
    path = jsonl(tmp_path / "q.jsonl", [row(id="ok"), row(**{"id": "bad", **fields})])
    problem = one_problem(path)
    assert (problem.file, problem.row, problem.field) == ("q.jsonl", 2, field)
    assert reason in problem.reason


def test_csv_row_spanning_lines_is_numbered_by_its_first_line(tmp_path: Path) -> None:
    text = 'question,question_type,image\n"two\nlines",fill_in_blank,a.png\n,fill_in_blank,b.png\n'
    problem = one_problem(write(tmp_path / "q.csv", text))
    assert (problem.row, problem.field) == (4, "question")


def test_csv_empty_cells_are_reported_per_row(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.csv", "question,question_type,image\n,fill_in_blank,a.png\nok?,,b.png\n"
    )
    problems = problems_of(path)
    assert [(p.row, p.field) for p in problems] == [(2, "question"), (3, "question_type")]


def test_duplicate_ids_name_both_rows(tmp_path: Path) -> None:
    problems = problems_of(jsonl(tmp_path / "q.jsonl", [row(id="x"), row(id="y"), row(id="x")]))
    assert [(p.row, p.field) for p in problems] == [(3, "id")]
    assert "duplicate id 'x', already used by row 1" in problems[0].reason


def test_json_array_element_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path / "q.json", json.dumps([row(), "just text"])))
    assert problem.row == 2 and "found str" in problem.reason


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(tmp_path: Path, constant: str) -> None:
    path = write(
        tmp_path / "q.jsonl",
        '{"question": "a", "image": "a.png", "question_type": '
        f'"fill_in_blank", "score": {constant}}}\n',
    )
    problem = one_problem(path)
    assert problem.row == 1 and f"{constant} is not valid JSON" in problem.reason


def test_duplicate_keys_in_one_object_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "q.jsonl", '{"question": "a", "question": "b", "image": "a.png"}\n')
    assert "key 'question' appears twice" in one_problem(path).reason


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    nested: object = "leaf"
    for _ in range(30):
        nested = {"n": nested}
    problem = one_problem(jsonl(tmp_path / "q.jsonl", [row(meta=nested)]))
    assert "nested deeper than 20 levels" in problem.reason


def test_pathological_nesting_does_not_crash_the_reader(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path / "q.json", "[" * 100_000 + "]" * 100_000))
    assert problem.reason.startswith("malformed JSON")


def test_overlong_fields_are_refused_by_name(tmp_path: Path) -> None:
    limits = QuestionLimits(max_field_chars=50)
    path = jsonl(tmp_path / "q.jsonl", [row(question="x" * 51, note="y" * 60)])
    problems = problems_of(path, limits=limits)
    assert [(p.field, p.reason) for p in problems] == [
        ("question", "is 51 characters long, above the limit of 50"),
        ("note", "is 60 characters long, above the limit of 50"),
    ]


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "q.jsonl", [row(id=str(i)) for i in range(100)])
    problem = one_problem(path, limits=QuestionLimits(max_file_bytes=1024))
    assert problem.row is None and "above the limit of 1 KB; split it" in problem.reason


def test_too_many_rows_is_refused(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "q.jsonl", [row(id=str(i)) for i in range(5)])
    assert "more than 3 questions" in one_problem(path, limits=QuestionLimits(max_rows=3)).reason


def test_non_utf8_file_is_refused_with_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.csv", b"question,question_type,image\nabc,fill_in_blank,a.png\n\xff\xfe,x,y\n"
    )
    problem = one_problem(path)
    assert problem.reason == "not UTF-8 text (byte 0xff near line 3); save the file as UTF-8"


def test_every_bad_row_is_listed_and_the_message_is_capped(tmp_path: Path) -> None:
    rows = [row(id=str(i), question="" if i % 2 else "ok?") for i in range(50)]
    with pytest.raises(IngestError) as caught:
        read_questions(jsonl(tmp_path / "q.jsonl", rows))
    assert len(caught.value.problems) == 25
    message = str(caught.value)
    assert message.startswith("25 problems found; nothing was imported:")
    assert "q.jsonl, row 2, field 'question': empty" in message
    assert message.endswith("... and 5 more")


def test_parse_questions_returns_good_rows_alongside_problems(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "q.jsonl", [row(id="a"), row(id="b", image=""), row(id="c")])
    rows, problems = parse_questions(path)
    assert [r.external_id for r in rows] == ["a", "c"]
    assert [(p.row, p.field) for p in problems] == [(2, "image")]
