"""VQA Curator home: every dataset and run at a glance, and what needs attention."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from db.models import ItemStatus, RunStatus
from db.queries import dataset_overview, recent_runs
from ui.bootstrap import bootstrap
from ui.charts import STATUS_LABELS, status_chart

page = bootstrap("Home", icon=":material/home:")

st.title("VQA Curator")
st.caption(
    "Upload questions and images, generate answers and distractors with a vision-language "
    "model, review every item, export the curated dataset."
)

if not page.datasets:
    st.info("No dataset yet. Three steps to a first curated set:", icon=":material/waving_hand:")
    st.page_link("pages/1_Upload.py", label="1. Upload a question file and its images",
                 icon=":material/upload:")
    st.page_link("pages/5_Settings.py", label="2. Set up an endpoint (or start the offline "
                 "SIMULATED one)", icon=":material/settings:")
    st.page_link("pages/2_Runs.py", label="3. Launch a run, then review", icon=":material/play_arrow:")
    st.stop()

with page.database.read() as session:
    runs = recent_runs(session, limit=10)
    datasets = dataset_overview(session)  # fresh counts here, not the sidebar's cached ones

totals = {status: sum(d.counts.get(status, 0) for d in datasets) for status in ItemStatus}
active = [run for run in runs if run.status.is_active or run.status is RunStatus.PAUSED]
metrics = st.columns(5)
metrics[0].metric("Datasets", len(datasets))
metrics[1].metric("Items", sum(totals.values()))
metrics[2].metric("To review", totals[ItemStatus.GENERATED])
metrics[3].metric("Accepted", totals[ItemStatus.ACCEPTED])
metrics[4].metric("Failed", totals[ItemStatus.FAILED])

st.subheader("Needs attention")
attention = 0
for run in active:
    attention += 1
    done = run.generated_items + run.failed_items
    st.page_link(
        "pages/2_Runs.py",
        label=f"Run {run.id} on {run.dataset_name} is {run.status.value}: {done}/{run.total_items} items",
        icon=":material/autorenew:",
        query_params={"dataset": str(run.dataset_id), "run": str(run.id)},
    )
for run in runs:
    if run.status is RunStatus.FAILED:
        attention += 1
        st.page_link(
            "pages/2_Runs.py",
            label=f"Run {run.id} on {run.dataset_name} failed: {run.message or 'see the run'}",
            icon=":material/error:",
            query_params={"dataset": str(run.dataset_id), "run": str(run.id)},
        )
for dataset in datasets:
    if dataset.needs_review:
        attention += 1
        st.page_link(
            "pages/3_Review.py",
            label=f"{dataset.needs_review} item(s) of {dataset.name} wait for review",
            icon=":material/rate_review:",
            query_params={"dataset": str(dataset.id), "status": ItemStatus.GENERATED.value},
        )
    if dataset.failed:
        attention += 1
        st.page_link(
            "pages/3_Review.py",
            label=f"{dataset.failed} item(s) of {dataset.name} failed to generate",
            icon=":material/report:",
            query_params={"dataset": str(dataset.id), "status": ItemStatus.FAILED.value},
        )
    pending = dataset.counts.get(ItemStatus.PENDING, 0)
    if pending and not any(run.dataset_id == dataset.id for run in active):
        attention += 1
        st.page_link(
            "pages/2_Runs.py",
            label=f"{pending} item(s) of {dataset.name} not generated yet: start a run",
            icon=":material/play_arrow:",
            query_params={"dataset": str(dataset.id)},
        )
if not attention:
    st.success("Nothing waiting: every item is reviewed.", icon=":material/task_alt:")

st.subheader("Datasets")
status_chart({d.name: d.counts for d in datasets})
st.dataframe(
    pd.DataFrame(
        [
            {
                "dataset": d.name,
                "items": d.total,
                **{STATUS_LABELS[s]: d.counts.get(s, 0) for s in ItemStatus},
                "last run": f"{d.last_run.id} ({d.last_run.status.value})" if d.last_run else "",
                "created": d.created_at,
            }
            for d in datasets
        ]
    ),
    hide_index=True,
)

st.subheader("Recent runs")
if runs:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "run": run.id,
                    "dataset": run.dataset_name,
                    "status": run.status.value,
                    "model": run.model or "",
                    "items": run.total_items,
                    "generated": run.generated_items,
                    "failed": run.failed_items,
                    "started": run.started_at,
                    "finished": run.finished_at,
                    "message": run.message or "",
                }
                for run in runs
            ]
        ),
        hide_index=True,
    )
else:
    st.caption("No run yet.")
