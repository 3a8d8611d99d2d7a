"""Upload: a question file and its images become a new dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from db.models import QuestionType
from ui import feedback
from ui.bootstrap import bootstrap
from ui.resources import dataset_list
from ui.sidebar import choose_dataset
from vqa_engine.errors import IngestError, InputError, Problem, VQAError
from vqa_engine.images import EXTENSIONS
from vqa_engine.ingest import ingest_dataset
from vqa_engine.uploads import QuestionPreview, UploadStage, preview_questions, sweep_stale_stages

QUESTION_TYPES = ["json", "jsonl", "csv"]
IMAGE_TYPES = sorted({*EXTENSIONS.values(), "jpeg", "tiff", "zip"})
_STAGE = "upload_stage"
_ROUND = "upload_round"
_RESULT = "upload_result"
_PROBLEMS = "upload_problems"
_MB = 1024 * 1024
POOL_FROM_BYTES = 32 * _MB  # smaller uploads are prepared in this process: no pool start-up

page = bootstrap("Upload", icon=":material/upload:")
st.title("Upload a dataset")
st.caption(
    "A question file (JSON array, JSONL or CSV with `question`, `question_type`, `image`, "
    "optional `id`; other fields are kept) and the images it names, as files or zip archives. "
    "Files are written to the server's disk as they arrive; nothing is imported until you press "
    "Import, and an import stores everything or nothing."
)


def _stage(create: bool) -> UploadStage | None:
    token = st.session_state.get(_STAGE)
    stage = UploadStage.reopen(page.data_dir, token) if token else None
    if stage is None and create:
        sweep_stale_stages(page.data_dir)
        stage = UploadStage.create(page.data_dir)
        st.session_state[_STAGE] = stage.token
    return stage


def _next_round() -> None:
    st.session_state[_ROUND] = st.session_state.get(_ROUND, 0) + 1


def _problem_frame(problems: list[Problem]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"file": p.file, "row": p.row, "field": p.field or "", "reason": p.reason} for p in problems]
    )


@st.cache_data(max_entries=8, show_spinner="Reading the question file…")
def _preview(path: str, modified: float, default_type: str | None) -> QuestionPreview:
    return preview_questions(
        Path(path), default_question_type=QuestionType(default_type) if default_type else None
    )


def _unique_name(wanted: str) -> str:
    taken = {d.name for d in page.datasets}
    name, number = wanted, 2
    while name in taken:
        name, number = f"{wanted}-{number}", number + 1
    return name


result = st.session_state.get(_RESULT)
if result:
    with st.container(border=True):
        st.success(f"Dataset **{result['dataset_name']}** created.", icon=":material/task_alt:")
        cols = st.columns(4)
        cols[0].metric("Items", result["items"])
        cols[1].metric("Images stored", result["images_stored"])
        cols[2].metric("Duplicates skipped", result["duplicates_skipped"])
        cols[3].metric("Seconds", f"{result['seconds']:.1f}")
        links = st.columns(3)
        links[0].page_link("pages/2_Runs.py", label="Start a run", icon=":material/play_arrow:",
                           query_params={"dataset": str(result["dataset_id"])})
        links[1].page_link("pages/3_Review.py", label="Browse its items",
                           icon=":material/rate_review:",
                           query_params={"dataset": str(result["dataset_id"])})
        if links[2].button("Upload another", icon=":material/add:"):
            st.session_state.pop(_RESULT, None)
            st.rerun()
    st.stop()

upload_round = st.session_state.get(_ROUND, 0)
left, right = st.columns(2)
questions_file = left.file_uploader(
    "Question file", type=QUESTION_TYPES, key=f"upload_questions_{upload_round}"
)
image_files = right.file_uploader(
    "Images (files or .zip archives)",
    type=IMAGE_TYPES,
    accept_multiple_files=True,
    key=f"upload_images_{upload_round}",
)

if questions_file is not None or image_files:
    # Copy to disk now, then drop the uploader's in-memory copy by starting a fresh widget.
    with feedback.reported():
        stage = _stage(create=True)
        assert stage is not None
        if questions_file is not None:
            stage.put_questions(questions_file.name, questions_file)
        for uploaded in image_files or []:
            stage.put_image(uploaded.name, uploaded)
        st.session_state.pop(_PROBLEMS, None)
    _next_round()
    st.rerun()

stage = _stage(create=False)
questions_path = stage.questions_path if stage else None
images = stage.image_files() if stage else []
archives = stage.archives() if stage else []

with st.container(border=True):
    st.markdown("**Staged for import**")
    cols = st.columns([3, 3, 1])
    if questions_path is not None:
        cols[0].text(f"Question file: {questions_path.name} ({questions_path.stat().st_size / _MB:.2f} MB)")
    else:
        cols[0].text("Question file: none yet")
    image_text = f"{len(images)} image file(s), {len(archives)} zip archive(s)"
    if stage is not None:
        image_text += f", {stage.total_bytes / _MB:.1f} MB in all"
    cols[1].text(image_text)
    if stage is not None and cols[2].button("Clear", icon=":material/delete:", key="upload_clear"):
        stage.discard()
        st.session_state.pop(_STAGE, None)
        st.session_state.pop(_PROBLEMS, None)
        st.rerun()
    if archives:
        st.caption("Archives: " + ", ".join(p.name for p in archives))

type_labels = {"": "as given in the file (question_type column)"} | {
    t.value: t.value for t in QuestionType
}
settings = st.columns(2)
default_type_name = settings[1].selectbox(
    "Default question type",
    list(type_labels),
    format_func=lambda t: type_labels[t],
    key="upload_default_type",
    help="Used for rows whose question_type is empty.",
)
default_type = QuestionType(default_type_name) if default_type_name else None
suggested = _unique_name(questions_path.stem) if questions_path else ""
if questions_path is not None and st.session_state.get("upload_name_for") != questions_path.name:
    st.session_state["upload_name"] = suggested
    st.session_state["upload_name_for"] = questions_path.name
dataset_name = settings[0].text_input("Dataset name", key="upload_name", max_chars=200)

preview: QuestionPreview | None = None
if questions_path is not None:
    preview = _preview(
        str(questions_path), questions_path.stat().st_mtime, default_type.value if default_type else None
    )
    if preview.ok:
        st.subheader("Preview")
        counts = ", ".join(f"{count} {name}" for name, count in sorted(preview.by_type.items()))
        st.caption(
            f"{preview.rows} question(s) ({counts}) naming {preview.image_refs} distinct image(s); "
            f"the first {len(preview.first)} are shown."
        )
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "row": row.row,
                        "id": row.external_id,
                        "type": row.question_type.value,
                        "question": row.question,
                        "image": row.image_ref if len(row.image_ref) < 200 else row.image_ref[:60] + "…",
                        "other fields": json.dumps(row.extra, ensure_ascii=False) if row.extra else "",
                    }
                    for row in preview.first
                ]
            ),
            hide_index=True,
        )
    else:
        st.error(
            f"The question file has {len(preview.problems)} problem(s); fix them and upload it again.",
            icon=":material/error:",
        )
        st.dataframe(_problem_frame(preview.problems), hide_index=True, key="upload_file_problems")

problems = st.session_state.get(_PROBLEMS)
if problems:
    st.error(
        f"Import refused: {len(problems)} problem(s), nothing was stored. Fix them and import again.",
        icon=":material/error:",
    )
    st.dataframe(_problem_frame(problems), hide_index=True, key="upload_import_problems")

ready = bool(preview and preview.ok and dataset_name.strip())
if st.button("Import", type="primary", icon=":material/file_upload:", disabled=not ready,
             key="upload_import"):
    assert stage is not None and questions_path is not None
    bar = st.progress(0.0, text="Preparing images…")

    def _progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=f"Preparing images: {done}/{total}")

    try:
        summary = ingest_dataset(
            page.database,
            questions_path,
            stage.image_paths(),
            dataset_name,
            default_question_type=default_type,
            data=page.data_dir,
            progress=_progress,
            workers=1 if stage.total_bytes < POOL_FROM_BYTES else None,
        )
    except IngestError as exc:
        st.session_state[_PROBLEMS] = exc.problems
        st.rerun()
    except (InputError, VQAError) as exc:
        bar.empty()
        st.error(str(exc))
    else:
        stage.discard()
        st.session_state.pop(_STAGE, None)
        st.session_state.pop(_PROBLEMS, None)
        st.session_state[_RESULT] = {
            "dataset_id": summary.dataset_id,
            "dataset_name": summary.dataset_name,
            "items": summary.items,
            "images_stored": summary.images_stored,
            "duplicates_skipped": summary.duplicates_skipped,
            "seconds": summary.seconds,
        }
        dataset_list.clear()
        choose_dataset(summary.dataset_id)
        _next_round()
        st.rerun()
