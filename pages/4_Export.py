"""Export: choose items, format and image handling; see counts and letters; download."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import streamlit as st

from db.models import ItemStatus
from ui import bulk_panel, feedback
from ui.bootstrap import bootstrap
from ui.charts import letter_chart
from vqa_engine.export import (
    ExportFormat,
    ExportSelection,
    ImageMode,
    default_file_name,
    export_dataset,
    export_preview,
)

EXPORTS_DIR = "exports"
DOWNLOAD_MAX_BYTES = 64 * 1024 * 1024  # larger files stay on the server, path shown
_RESULT = "export_result"
_MB = 1024 * 1024

FORMAT_LABELS = {
    ExportFormat.JSON: "JSON (the command-line pipeline's layout)",
    ExportFormat.JSONL: "JSONL (one record per line)",
    ExportFormat.LLAVA: "LLaVA conversations (JSON)",
    ExportFormat.MMBENCH_TSV: "MMBench-style TSV (A/B/C/D columns, base64 images)",
    ExportFormat.PARQUET: "Parquet (images embedded)",
}
SELECTION_LABELS = {
    ExportSelection.ACCEPTED: "accepted items",
    ExportSelection.ACCEPTED_AND_GENERATED: "accepted and not yet reviewed items",
    ExportSelection.ALL: "all items (including rejected, failed and pending)",
}
IMAGE_LABELS = {
    ImageMode.FILE_NAMES: "file names as uploaded",
    ImageMode.ZIP: "a zip with the images",
    ImageMode.EMBEDDED: "embedded (data: URLs)",
}

page = bootstrap("Export", icon=":material/download:")
st.title("Export")
if page.dataset is None:
    st.info("Upload a dataset first.", icon=":material/info:")
    st.stop()
dataset = page.dataset

left, right = st.columns([2, 3], gap="large")
with left:
    selection = st.radio("Items", list(SELECTION_LABELS), format_func=lambda s: SELECTION_LABELS[s],
                         key="export_selection")
    fmt = st.selectbox("Format", list(FORMAT_LABELS), format_func=lambda f: FORMAT_LABELS[f],
                       key="export_format")
    image_mode = st.radio("Images", list(IMAGE_LABELS), format_func=lambda m: IMAGE_LABELS[m],
                          key="export_images", horizontal=True)
    if fmt.embeds_images and image_mode is not ImageMode.ZIP:
        st.caption("This format always carries the image bytes itself.")

preview = export_preview(page.database, dataset.id, selection)
with right:
    metrics = st.columns(3)
    metrics[0].metric("Items to export", preview.count)
    metrics[1].metric("Multiple choice", sum(preview.letters.values()))
    metrics[2].metric("In the dataset", dataset.total)
    if preview.letters:
        st.caption("Correct letter among exported multiple-choice items")
        letter_chart(preview.letters)
    elif preview.count:
        st.caption("No multiple-choice item in this selection.")

bulk_panel.render_balance_panel(page.database, dataset.id,
                                selection.statuses or tuple(ItemStatus), curator=page.curator)

file_name = default_file_name(dataset.name, fmt, image_mode)
if st.button("Export", type="primary", icon=":material/file_export:", key="export_run",
             disabled=preview.count == 0):
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = page.data_dir / EXPORTS_DIR / f"{Path(file_name).stem}-{stamp}{Path(file_name).suffix}"
    bar = st.progress(0.0, text="Exporting…")

    def _progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=f"Exporting: {done}/{total} items")

    with feedback.reported():
        summary = export_dataset(
            page.database, dataset.id, target, fmt=fmt, selection=selection,
            image_mode=image_mode, progress=_progress,
        )
        st.session_state[_RESULT] = {
            "path": str(summary.path or target),
            "file_name": file_name,
            "items": summary.items,
            "bytes": summary.bytes,
            "seconds": summary.seconds,
            "dataset_id": dataset.id,
        }
    st.rerun()
if preview.count == 0:
    st.caption("Nothing to export with this selection: accept items on the Review page or "
               "choose a wider selection.")

result = st.session_state.get(_RESULT)
if result and result["dataset_id"] == dataset.id and Path(result["path"]).is_file():
    path = Path(result["path"])
    with st.container(border=True):
        st.success(
            f"{result['items']} item(s) exported in {result['seconds']:.1f} s "
            f"({result['bytes'] / _MB:.2f} MB).",
            icon=":material/task_alt:",
        )
        st.text(f"Saved on the server: {path}")
        if result["bytes"] <= DOWNLOAD_MAX_BYTES:
            st.download_button(
                f"Download {result['file_name']}",
                data=path.read_bytes(),
                file_name=result["file_name"],
                type="primary",
                icon=":material/download:",
                on_click="ignore",
                key="export_download",
            )
        else:
            st.info(
                f"The file is larger than {DOWNLOAD_MAX_BYTES // _MB} MB, so it is not passed "
                "through the browser session: copy it from the path above.",
                icon=":material/info:",
            )
