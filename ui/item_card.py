"""The item card: image, question, lettered options, explanation, flags and history.

Everything that came from a question file or a model is rendered with `st.text` (no
Markdown, no HTML) or inside a dataframe; Markdown is used only for our own labels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import streamlit as st

from db.models import Generation, Image, ItemStatus, QuestionType
from db.queries import ItemDetail
from ui.charts import STATUS_LABELS
from vqa_engine.images import stored_path
from vqa_engine.review import HistoryEntry

STATUS_BADGE_COLOURS = {
    ItemStatus.PENDING: "gray",
    ItemStatus.GENERATING: "blue",
    ItemStatus.GENERATED: "orange",
    ItemStatus.FAILED: "red",
    ItemStatus.ACCEPTED: "green",
    ItemStatus.REJECTED: "gray",
}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def escape_markdown(text: str) -> str:
    """`text` as literal characters inside a Markdown label."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def image_file(data_dir: Path, image: Image, *, original: bool = False) -> Path | None:
    relative = image.original_path if original else image.prepared_path
    try:
        path = stored_path(data_dir, relative)
    except Exception:  # noqa: BLE001 - a path outside the data dir is treated as missing
        return None
    return path if path.is_file() else None


@st.dialog("Image", width="large")
def _enlarged(path: str, caption: str) -> None:
    st.image(path, width="stretch")
    st.text(caption)


def render_image(data_dir: Path, image: Image, *, key: str) -> None:
    shown = image_file(data_dir, image)
    if shown is None:
        st.warning("The image file is missing from the data dir.", icon=":material/broken_image:")
        return
    st.image(str(shown), width="stretch")
    st.caption(
        f"{image.width}×{image.height} px {image.format}, sent to the model as "
        f"{image.prepared_width}×{image.prepared_height} JPEG"
    )
    if st.button("Enlarge", icon=":material/zoom_in:", key=key, shortcut="I",
                 help="Show the original image at full width (I)"):
        original = image_file(data_dir, image, original=True) or shown
        _enlarged(str(original), image.original_name)


def _options(generation: Generation) -> None:
    options = dict(generation.options or {})
    correct = generation.correct_letter
    for letter, text in options.items():
        if letter == correct:
            st.success(f"**{letter}** · {escape_markdown(str(text))}", icon=":material/check_circle:")
            continue
        with st.container(border=True, horizontal=True, vertical_alignment="center", gap="small"):
            st.badge(letter, color="gray")
            st.text(str(text), width="stretch")
            st.badge("distractor", color="gray")


def _flags(generation: Generation) -> None:
    flags = {k: v for k, v in (generation.quality_flags or {}).items() if v not in (None, False, "")}
    if not flags:
        return
    st.caption("Quality flags")
    for name, value in sorted(flags.items()):
        with st.container(horizontal=True, vertical_alignment="center", gap="small"):
            st.badge(str(name), color="orange", icon=":material/flag:")
            if not isinstance(value, bool):
                st.text(str(value) if not isinstance(value, dict) else
                        str(value.get("reason") or value))


def _generation_meta(generation: Generation) -> str:
    parts = [f"generation {generation.id} ({generation.source.value})"]
    if generation.model:
        parts.append(generation.model)
    if generation.prompt_version:
        parts.append(f"prompts {generation.prompt_version}")
    if generation.latency_ms is not None:
        parts.append(f"{generation.latency_ms:.0f} ms")
    if generation.prompt_tokens or generation.completion_tokens:
        parts.append(f"{generation.prompt_tokens}+{generation.completion_tokens} tokens")
    return " · ".join(parts)


def render_content(detail: ItemDetail) -> None:
    """Question, options / answer, explanation, flags, or why there is nothing yet."""
    item, generation = detail.item, detail.current
    st.caption("Question")
    st.text(item.question, width="stretch")
    if generation is None:
        if item.status is ItemStatus.FAILED:
            st.error(f"Generation failed: {escape_markdown(item.last_error or 'no reason recorded')}",
                     icon=":material/error:")
        elif item.status is ItemStatus.GENERATING:
            st.info("Being generated right now…", icon=":material/hourglass_top:")
        else:
            st.info("Not generated yet. Start a run from the Runs page, or edit in an answer.",
                    icon=":material/hourglass_empty:")
        return
    if item.question_type is QuestionType.MULTIPLE_CHOICE and generation.options:
        st.caption("Options (correct one in green)")
        _options(generation)
    else:
        st.caption("Answer")
        with st.container(border=True):
            st.text(generation.answer or "", width="stretch")
    if generation.explanation:
        st.caption("Explanation")
        st.text(generation.explanation, width="stretch")
    _flags(generation)
    if item.status in (ItemStatus.PENDING, ItemStatus.GENERATING):
        st.info("A new generation has been requested; this card updates when it lands.",
                icon=":material/autorenew:")
    if item.status is ItemStatus.FAILED and item.last_error:
        st.error(f"Last attempt failed: {escape_markdown(item.last_error)}", icon=":material/error:")
    st.caption(escape_markdown(_generation_meta(generation)))


def render_header(detail: ItemDetail) -> None:
    item = detail.item
    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
        st.badge(STATUS_LABELS[item.status], color=STATUS_BADGE_COLOURS[item.status])
        st.badge(item.question_type.value.replace("_", " "), color="blue")
        st.text(f"item {item.id} · id {item.external_id} · {detail.dataset_name} · "
                f"version {item.version}")


def render_history(
    entries: Sequence[HistoryEntry],
    undo_buttons: Callable[[Sequence[HistoryEntry]], None] | None = None,
) -> None:
    """The history table; `undo_buttons` draws an Undo for each review entry under it."""
    if not entries:
        st.caption("No history yet.")
        return
    rows = []
    for entry in entries:
        changes = "; ".join(
            f"{change.field}: {_short(change.before)} → {_short(change.after)}"
            for change in entry.changes
        )
        rows.append(
            {
                "when": entry.at,
                "who": entry.actor,
                "what": entry.summary,
                "reason": entry.reason or "",
                "changes": changes,
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    if undo_buttons is not None:
        undo_buttons(entries)


def _short(value: object, limit: int = 60) -> str:
    text = "–" if value in (None, "", {}, []) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_item_card(detail: ItemDetail, data_dir: Path, *, image_key: str) -> None:
    """Header, then image beside question and answer."""
    render_header(detail)
    image_col, content_col = st.columns([2, 3], gap="large")
    with image_col:
        render_image(data_dir, detail.image, key=image_key)
    with content_col:
        render_content(detail)
