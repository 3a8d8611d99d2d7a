"""Runs: launch a generation run, watch it live, pause / resume / cancel, look back."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pandas as pd
import streamlit as st

from db.models import ItemStatus, QuestionType, RunStatus
from db.queries import ItemFilter, count_items, list_items
from ui import feedback
from ui.bootstrap import bootstrap
from vqa_engine.connection_check import check_endpoint
from vqa_engine.errors import ConfigError, VQAError
from vqa_engine.generator import GenerationSettings
from vqa_engine.model_checks import ModelChecks
from vqa_engine.profiles import Profile, list_profiles
from vqa_engine.prompt_store import current_prompts
from vqa_engine.run_estimate import estimate_run
from vqa_engine.runs import (
    ItemSelection,
    KeyOrigin,
    RunProgress,
    RunSettings,
    cancel_run,
    find_open_run,
    list_runs,
    pause_run,
    resume_run,
    run_progress,
    start_run,
)
from vqa_engine.settings import Endpoint, resolve_endpoint

RUN_PARAM = "run"
MAX_SAMPLES = 600
FILTER_LIMIT = 100_000
_SAMPLES = "run_samples"
_CONFIGS = "run_configs"

page = bootstrap("Runs", icon=":material/play_arrow:")
st.title("Runs")
if page.dataset_id is None:
    st.info("Upload a dataset first.", icon=":material/info:")
    st.page_link("pages/1_Upload.py", label="Upload", icon=":material/upload:")
    st.stop()
database = page.database
dataset_id = page.dataset_id


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _shown_run_id() -> int | None:
    """The run in the URL, else this dataset's open run, else its newest."""
    value = st.query_params.get(RUN_PARAM)
    if value and value.isdigit():
        runs = list_runs(database, dataset_id, limit=200)
        if any(run.id == int(value) for run in runs):
            return int(value)
    open_run = find_open_run(database, dataset_id)
    if open_run is not None:
        return open_run.id
    newest = list_runs(database, dataset_id, limit=1)
    return newest[0].id if newest else None


def _show_run(run_id: int) -> None:
    st.query_params[RUN_PARAM] = str(run_id)


# ------------------------------------------------------------------ live view


def _record_sample(progress: RunProgress) -> pd.DataFrame:
    """Progress over time as seen by this tab (seeded with the run's start)."""
    samples: dict[int, list[dict[str, float]]] = st.session_state.setdefault(_SAMPLES, {})
    series = samples.setdefault(progress.run_id, [])
    started = progress.started_at or progress.created_at
    now = progress.finished_at or datetime.now(timezone.utc)
    if started is not None and not series:
        series.append({"seconds": 0.0, "done": 0.0, "items/s": 0.0})
    elapsed = (now - started).total_seconds() if started else 0.0
    if not series or series[-1]["done"] != progress.done or progress.status.is_active:
        series.append(
            {"seconds": round(elapsed, 1), "done": float(progress.done),
             "items/s": round(progress.items_per_second, 2)}
        )
    del series[:-MAX_SAMPLES]
    return pd.DataFrame(series)


def _run_config(run_id: int, dataset: int) -> dict[str, Any]:
    """A run's stored configuration (it never changes, so this tab keeps it)."""
    configs: dict[int, dict[str, Any]] = st.session_state.setdefault(_CONFIGS, {})
    if run_id not in configs:
        run = next((r for r in list_runs(database, dataset, limit=500) if r.id == run_id), None)
        configs[run_id] = dict(run.config or {}) if run is not None else {}
    return configs[run_id]


def _key_again(progress: RunProgress, config: dict[str, Any]) -> None:
    """A key typed into the run form lives in memory only: after a restart, ask again."""
    if KeyOrigin.from_config(config).kind != "form" or page.host is None:
        return
    if page.host.has_key(progress.run_id):
        return
    st.warning(
        f"Run {progress.run_id} used an API key typed into its run form; it is kept only in "
        "memory and this server no longer has it. Type it again to resume the run.",
        icon=":material/key:",
    )
    key = st.text_input("API key for this run", type="password", key=f"run_key_{progress.run_id}")
    if st.button("Resume with this key", key="run_resume_with_key", disabled=not key):
        with feedback.reported():
            page.host.provide_key(progress.run_id, key)
            resume_run(database, progress.run_id)
        st.rerun()


def _run_controls(progress: RunProgress) -> None:
    config = _run_config(progress.run_id, progress.dataset_id)
    with st.expander("Configuration (no secrets)", icon=":material/tune:"):
        st.json(config, expanded=1)
    if progress.status in (RunStatus.PAUSED, RunStatus.FAILED):
        _key_again(progress, config)
    cols = st.columns([1, 1, 1, 4])
    status = progress.status
    if status.is_active and cols[0].button("Pause", icon=":material/pause:", key="run_pause"):
        with feedback.reported():
            pause_run(database, progress.run_id)
        st.rerun()
    if status in (RunStatus.PAUSED, RunStatus.FAILED) and cols[0].button(
        "Resume", icon=":material/play_arrow:", key="run_resume"
    ):
        with feedback.reported():
            resume_run(database, progress.run_id)
        st.rerun()
    if not status.is_finished and cols[1].button(
        "Cancel", icon=":material/stop:", key="run_cancel"
    ):
        with feedback.reported():
            cancel_run(database, progress.run_id)
        st.rerun()
    cols[2].page_link(
        "pages/3_Review.py",
        label="Review",
        icon=":material/rate_review:",
        query_params={"dataset": str(progress.dataset_id), "run": str(progress.run_id)},
    )


def _progress_body(run_id: int) -> RunProgress | None:
    try:
        progress = run_progress(database, run_id)
    except VQAError as exc:
        st.error(str(exc))
        return None
    status = progress.status
    st.subheader(f"Run {run_id} · {status.value}")
    st.text(f"{progress.model} at {progress.base_url}")
    st.progress(
        progress.fraction,
        text=(
            f"{progress.done} of {progress.total} items "
            f"({progress.generated} generated, {progress.failed} failed, "
            f"{progress.in_progress} in progress, {progress.pending} waiting)"
        ),
    )
    if progress.message and status is not RunStatus.RUNNING:
        box = st.error if status is RunStatus.FAILED else st.info
        box(f"Run {run_id}: {progress.message}")
    cols = st.columns(6)
    cols[0].metric("Items/s", f"{progress.items_per_second:.2f}")
    cols[1].metric("ETA", _format_seconds(progress.eta_seconds) if status.is_active else "–")
    cols[2].metric("Requests", progress.requests, help=f"{progress.ledger_hits} answered from the "
                   f"ledger without a new request, {progress.retries} retries")
    cols[3].metric("Latency p50", f"{progress.latency_p50_ms:.0f} ms"
                   if progress.latency_p50_ms is not None else "–")
    cols[4].metric("Latency p95", f"{progress.latency_p95_ms:.0f} ms"
                   if progress.latency_p95_ms is not None else "–")
    cols[5].metric("Tokens", f"{progress.prompt_tokens + progress.completion_tokens:,}",
                   help=f"{progress.prompt_tokens:,} prompt, {progress.completion_tokens:,} completion")
    chart, errors = st.columns([3, 2])
    with chart:
        frame = _record_sample(progress)
        if len(frame) > 1:
            st.line_chart(frame, x="seconds", y="done", x_label="seconds since start",
                          y_label="items done", height=220)
    with errors:
        if progress.errors_by_type:
            st.caption("Errors by class")
            st.bar_chart(
                pd.DataFrame(
                    {"class": list(progress.errors_by_type), "count": list(progress.errors_by_type.values())}
                ),
                x="class", y="count", horizontal=True, height=220,
            )
        else:
            st.caption("No errors so far.")
    _run_controls(progress)
    return progress


@st.fragment(run_every=1)
def live_run(run_id: int) -> None:
    progress = _progress_body(run_id)
    if progress is not None and progress.status.is_finished:
        st.rerun()  # the whole page: history and counts change, polling stops


@st.fragment
def finished_run(run_id: int) -> None:
    _progress_body(run_id)


shown = _shown_run_id()
if shown is not None:
    with st.container(border=True):
        status_now = run_progress(database, shown).status
        if status_now.is_finished:
            finished_run(shown)
        else:
            live_run(shown)


# ------------------------------------------------------------------ launch form

def _endpoint_choices(profiles: list[Profile]) -> dict[str, str]:
    choices = {"env": "Default (environment / secrets.toml)"}
    for profile in profiles:
        label = f"{profile.name} — {profile.model}"
        choices[f"profile:{profile.id}"] = label + ("  [SIMULATED]" if profile.simulated else "")
    choices["custom"] = "Custom URL and key (this run only)"
    return choices


def _chosen_endpoint(choice: str, profiles: list[Profile], model: str) -> Endpoint:
    if choice.startswith("profile:"):
        profile = next(p for p in profiles if p.id == int(choice.split(":", 1)[1]))
        endpoint = profile.endpoint()
    elif choice == "custom":
        endpoint = resolve_endpoint(
            st.session_state.get("run_custom_url") or None,
            None,
            st.session_state.get("run_custom_key") or None,
        )
    else:
        endpoint = resolve_endpoint()
    if model.strip():
        endpoint = Endpoint(endpoint.base_url, model.strip(), endpoint.api_key, endpoint.key_source)
    return endpoint


open_run = find_open_run(database, dataset_id)
with st.expander("Launch a run", expanded=open_run is None, icon=":material/rocket_launch:"):
    profiles = list_profiles(database)
    choices = _endpoint_choices(profiles)
    left, right = st.columns(2)
    selection_labels = {
        ItemSelection.PENDING: "items not generated yet (pending)",
        ItemSelection.FAILED: "failed items",
        ItemSelection.INCOMPLETE: "pending and failed items",
        ItemSelection.ALL: "all items (generated ones again too)",
        ItemSelection.IDS: "items matching a filter",
    }
    selection = left.selectbox(
        "Items", list(selection_labels), format_func=lambda s: selection_labels[s], key="run_selection"
    )
    item_ids: list[int] | None = None
    if selection is ItemSelection.ALL:
        left.warning("Accepted and rejected items go back to pending and get a new generation; "
                     "their earlier decisions stay in each item's history.",
                     icon=":material/warning:")
    if selection is ItemSelection.IDS:
        f1, f2, f3 = left.columns(3)
        statuses = f1.multiselect("Status", [s for s in ItemStatus if s is not ItemStatus.GENERATING],
                                  format_func=lambda s: s.value, key="run_filter_status")
        types = f2.multiselect("Type", list(QuestionType), format_func=lambda t: t.value,
                               key="run_filter_type")
        text = f3.text_input("Text", key="run_filter_text")
        item_filter = ItemFilter(dataset_id=dataset_id, statuses=tuple(statuses),
                                 question_types=tuple(types), text=text)
        with database.read() as session:
            matching = count_items(session, item_filter)
            if matching > FILTER_LIMIT:
                left.warning(f"{matching} items match; a filtered run takes at most {FILTER_LIMIT}. "
                             "Narrow the filter or choose 'all items'.")
            rows = list_items(session, item_filter, limit=min(matching, FILTER_LIMIT))
        item_ids = [row.id for row in rows if row.status is not ItemStatus.GENERATING]

    choice = right.selectbox("Endpoint", list(choices), format_func=lambda c: choices[c],
                             key="run_endpoint_choice")
    if choice == "custom":
        right.text_input("Base URL", key="run_custom_url", placeholder="http://localhost:8000/v1")
        right.text_input(
            "API key", key="run_custom_key", type="password",
            help="Kept in this server's memory only, never stored. After a restart the run "
                 "pauses until the key is given again; for long runs use a profile whose key "
                 "is an environment variable.",
        )
    try:
        base_endpoint = _chosen_endpoint(choice, profiles, "")
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
    if "SIMULATED" in choices[choice]:
        right.warning("SIMULATED endpoint: answers are made up by the local simulator.",
                      icon=":material/science:")
    model = right.text_input("Model", value=base_endpoint.model, key=f"run_model_{choice}")
    if base_endpoint.has_key:
        right.caption(f"Key {base_endpoint.masked_key}, from {base_endpoint.key_source}.")
    else:
        right.caption("No API key (fine for a local vLLM / Ollama; set one in a profile or "
                      "VQA_API_KEY for hosted endpoints).")

    params = st.columns(4)
    concurrency = params[0].number_input("Concurrency", 1, 1024, 8, key="run_concurrency",
                                         help="Requests in flight at once; lowered "
                                              "automatically when the endpoint rate-limits.")
    temperature = params[1].slider("Temperature", 0.0, 2.0, 0.7, 0.05, key="run_temperature")
    distractors = params[2].slider("Distractors per item", 1, 8, (2, 4), key="run_distractors")
    max_tokens = params[3].number_input("Max tokens", 16, 32_768, 1024, step=64, key="run_max_tokens")
    most_options = distractors[1] + 1
    check_cols = st.columns(2)
    blind_check = check_cols[0].checkbox(
        "Blind check (ask without the image)", key="run_blind_check",
        help="1 extra request per multiple-choice item, without the image: flags "
             "blind_answerable when the model picks the correct letter anyway.")
    circular_check = check_cols[1].checkbox(
        "Circular check (rotate options)", key="run_circular_check",
        help="One extra request per option of each multiple-choice item (up to "
             f"{most_options} with these settings), with the image: flags "
             "circular_inconsistent when the pick moves with the options or differs from "
             "the recorded letter.")
    model_checks = ModelChecks(blind=blind_check, circular=circular_check)
    with st.expander("Advanced"):
        adv = st.columns(3)
        attempt_limit = adv[0].number_input("Attempts per item", 1, 10, 3, key="run_attempts")
        batch_size = adv[1].number_input("Batch size", 1, 1000, 32, key="run_batch")
        normalize = adv[2].checkbox("Normalise model name", value=True, key="run_normalize",
                                    help="/workspace/Qwen3-VL-235B-A22B-Instruct → qwen3-vl-235b-a22b-instruct")

    endpoint = _chosen_endpoint(choice, profiles, model)
    estimate = estimate_run(database, dataset_id, selection, item_ids, checks=model_checks,
                            max_options=most_options)
    checks_part = ""
    if estimate.check_requests:
        parts = [f"{count:,} {name}" for count, name in (
            (estimate.blind_check_requests, "blind check"),
            (estimate.circular_check_requests, "circular check")) if count]
        most = (f"; circular counted at {most_options} options per item"
                if estimate.circular_check_requests else "")
        checks_part = f" ({estimate.requests:,} to generate, {', '.join(parts)}{most})"
    st.info(
        f"Estimate: {estimate.items} item(s) ({estimate.multiple_choice} multiple choice, "
        f"{estimate.fill_in_blank} fill-in-blank) → at most {estimate.total_requests:,} "
        f"requests{checks_part}, about {estimate.image_tokens:,} image tokens "
        f"(~{estimate.image_tokens_per_request:,.0f} per request, Qwen-VL counting). "
        "Answers already paid for are reused from the ledger.",
        icon=":material/calculate:",
    )

    actions = st.columns([1, 1, 4])
    if actions[1].button("Test connection", icon=":material/network_check:", key="run_test"):
        with st.spinner(f"Asking {endpoint.base_url}…"):
            try:
                report = check_endpoint(endpoint, normalize_model=normalize)
            except VQAError as exc:
                st.error(str(exc), icon=":material/error:")
            else:
                st.success(str(report), icon=":material/check_circle:")
    if actions[0].button("Start run", type="primary", icon=":material/rocket_launch:",
                         key="run_start", disabled=estimate.items == 0):
        with feedback.reported():
            settings = RunSettings(
                concurrency=int(concurrency),
                batch_size=int(batch_size),
                generation=GenerationSettings(
                    distractors_min=distractors[0],
                    distractors_max=distractors[1],
                    temperature=float(temperature),
                    max_tokens=int(max_tokens),
                    attempt_limit=int(attempt_limit),
                    prompts=current_prompts(database),
                ),
                normalize_model=normalize,
                model_checks=model_checks,
            )
            if page.host is not None:
                run_id = page.host.launch_run(dataset_id, endpoint, settings, selection, item_ids)
            else:
                run_id = start_run(database, dataset_id, endpoint, settings, selection, item_ids)
                if choice == "custom" and endpoint.has_key:
                    feedback.tell("warning", "A separate worker runs this run: a key typed here "
                                  "does not reach it. Use a profile whose key is an environment "
                                  "variable.")
            _show_run(run_id)
            feedback.tell("success", f"Run {run_id} started on {estimate.items} item(s).")
        st.rerun()


# ------------------------------------------------------------------ history

st.subheader("History")
runs = list_runs(database, dataset_id, limit=100)
if not runs:
    st.caption("No run of this dataset yet.")
else:
    table = pd.DataFrame(
        [
            {
                "run": run.id,
                "status": run.status.value,
                "model": (run.config or {}).get("endpoint", {}).get("model", ""),
                "items": (run.config or {}).get("selection", ""),
                "total": run.total_items,
                "generated": run.generated_items,
                "failed": run.failed_items,
                "requests": run.requests,
                "ledger hits": run.ledger_hits,
                "created": run.created_at,
                "finished": run.finished_at,
                "outcome": run.message or "",
            }
            for run in runs
        ]
    )
    picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row",
                          key="run_history")
    rows = picked.selection.rows if picked else []
    if rows:
        run = runs[rows[0]]
        with st.container(border=True):
            st.markdown(f"**Run {run.id}** — {run.status.value}")
            if run.id != shown:
                if st.button("Show this run above", key="run_show"):
                    _show_run(run.id)
                    st.rerun()
            cols = st.columns(2)
            with cols[0]:
                st.caption("Configuration snapshot (no secrets)")
                st.json(run.config or {}, expanded=1)
            with cols[1]:
                st.caption("Outcome")
                st.json(
                    {
                        "status": run.status.value,
                        "message": run.message,
                        "generated": run.generated_items,
                        "failed": run.failed_items,
                        "errors_by_type": run.errors_by_type,
                        "requests": run.requests,
                        "ledger_hits": run.ledger_hits,
                        "retries": run.retries,
                        "prompt_tokens": run.prompt_tokens,
                        "completion_tokens": run.completion_tokens,
                        "started": str(run.started_at),
                        "finished": str(run.finished_at),
                    }
                )
