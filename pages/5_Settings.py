"""Settings: endpoint profiles, prompt templates, and the offline SIMULATED endpoint."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import feedback
from ui.bootstrap import bootstrap
from ui.resources import demo_simulator
from vqa_engine import prompt_store
from vqa_engine.errors import VQAError
from vqa_engine.profiles import (
    ProfileSpec,
    delete_profile,
    list_profiles,
    save_profile,
    save_simulator_profile,
)
from vqa_engine.settings import resolve_endpoint
from vqa_engine.simulator import SIMULATED_MODEL, SimulatorConfig

page = bootstrap("Settings", icon=":material/settings:")
database = page.database
st.title("Settings")

profiles_tab, prompts_tab, simulator_tab = st.tabs(
    ["Endpoint profiles", "Prompt templates", "Simulator (SIMULATED)"]
)

# ------------------------------------------------------------------ endpoint profiles

with profiles_tab:
    st.caption(
        "A profile names an OpenAI-compatible endpoint (vLLM, Ollama, OpenAI, DashScope, "
        "Gemini's OpenAI-compatible API, LM Studio …) and **where its key is read from**: an "
        "environment variable or a `.streamlit/secrets.toml` entry. The key itself is never "
        "stored and only ever shown masked."
    )
    try:
        default = resolve_endpoint()
        key = (f"key {default.masked_key} from {default.key_source}" if default.has_key
               else "no API key")
        st.text(
            f"Default endpoint (environment / secrets.toml): {default.base_url} · model "
            f"{default.model} · {key}"
        )
    except VQAError as exc:
        st.error(str(exc))

    profiles = list_profiles(database)
    if profiles:
        rows = []
        for profile in profiles:
            try:
                masked = profile.endpoint().masked_key
            except VQAError:
                masked = "(unreadable secrets.toml)"
            rows.append(
                {
                    "name": profile.name,
                    "base URL": profile.base_url,
                    "model": profile.model,
                    "key from": profile.key_location,
                    "key": masked,
                    "simulated": "SIMULATED" if profile.simulated else "",
                }
            )
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="settings_profiles_table")
    else:
        st.caption("No profile yet.")

    names = {p.id: p.name for p in profiles}
    new = 0  # None would read as "nothing selected" to the widget
    picked_id = st.selectbox(
        "Edit", [new, *names], format_func=lambda i: "New profile" if i == new else names[i],
        key="settings_profile_pick",
    )
    editing = picked_id or None
    current = next((p for p in profiles if p.id == editing), None)
    suffix = str(editing or "new")
    with st.form(f"profile_form_{suffix}"):
        cols = st.columns(3)
        name = cols[0].text_input("Name", value=current.name if current else "")
        base_url = cols[1].text_input(
            "Base URL", value=current.base_url if current else "http://localhost:8000/v1"
        )
        model = cols[2].text_input("Model", value=current.model if current else "")
        sources = {"none": "no key (local endpoint)", "env": "environment variable",
                   "secret": "secrets.toml entry"}
        initial = "env" if current and current.key_env else (
            "secret" if current and current.key_secret else "none")
        cols = st.columns(2)
        source = cols[0].radio("Key from", list(sources), index=list(sources).index(initial),
                               format_func=lambda s: sources[s], horizontal=True)
        key_name = cols[1].text_input(
            "Variable / entry name",
            value=(current.key_env or current.key_secret or "") if current else "",
            placeholder="e.g. DASHSCOPE_API_KEY — the name, never the key",
        )
        saved = st.form_submit_button("Save profile", type="primary", icon=":material/save:")
    if saved:
        with feedback.reported():
            spec = ProfileSpec(
                name=name,
                base_url=base_url,
                model=model,
                key_env=key_name if source == "env" else None,
                key_secret=key_name if source == "secret" else None,
                simulated=bool(current and current.simulated),
            )
            save_profile(database, spec, profile_id=editing)
            feedback.tell("success", f"Profile {spec.name.strip()} saved.")
        st.rerun()
    if current is not None and st.button("Delete this profile", icon=":material/delete:",
                                         key="settings_profile_delete"):
        delete_profile(database, current.id)
        feedback.tell("success", f"Profile {current.name} deleted.")
        st.rerun()

# ------------------------------------------------------------------ prompt templates

with prompts_tab:
    prompts = prompt_store.current_prompts(database)
    st.caption(
        f"Prompt set in force: version `{prompts.version}`. Every generation records the "
        "version that produced it. Placeholders such as `$question` are filled in by the "
        "generator and must stay."
    )
    template = st.selectbox("Template", prompt_store.template_names(), key="settings_template")
    versions = prompt_store.history(database, template)
    text_now = versions[0].text if versions else prompt_store.default_text(template)
    marker = versions[0].id if versions else 0
    edited = st.text_area("Text", value=text_now, height=320,
                          key=f"settings_template_text_{template}_{marker}")
    cols = st.columns([1, 1, 4])
    if cols[0].button("Save new version", type="primary", icon=":material/save:",
                      key="settings_template_save", disabled=edited == text_now):
        with feedback.reported():
            saved_version = prompt_store.save_template(database, template, edited)
            feedback.tell("success", f"{template} saved as version {saved_version.version}.")
        st.rerun()
    if cols[1].button("Reset to default", icon=":material/restart_alt:",
                      key="settings_template_reset", disabled=text_now == prompt_store.default_text(template)):
        with feedback.reported():
            prompt_store.reset_template(database, template)
            feedback.tell("success", f"{template} is back to the shipped wording.")
        st.rerun()
    if versions:
        with st.expander(f"History of {template} ({len(versions)} version(s))"):
            picked = st.dataframe(
                pd.DataFrame(
                    [
                        {"version": v.version, "saved": v.created_at,
                         "default wording": "yes" if v.is_default else "",
                         "characters": len(v.text)}
                        for v in versions
                    ]
                ),
                hide_index=True, on_select="rerun", selection_mode="single-row",
                key=f"settings_template_history_{template}",
            )
            if picked and picked.selection.rows:
                chosen = versions[picked.selection.rows[0]]
                st.code(chosen.text, language=None, wrap_lines=True)
                if chosen.text != text_now and st.button(
                    f"Restore version {chosen.version}", key="settings_template_restore"
                ):
                    with feedback.reported():
                        prompt_store.save_template(database, template, chosen.text)
                        feedback.tell("success", f"{template}: version {chosen.version} restored.")
                    st.rerun()

# ------------------------------------------------------------------ simulator

with simulator_tab:
    st.warning(
        "The simulator is a **SIMULATED** endpoint running inside this server: it looks at each "
        "image only enough to make up plausible answers and distractors. Use it to try the "
        "workflow offline; its items are not real model output.",
        icon=":material/science:",
    )
    simulator = demo_simulator()
    if simulator.server is not None:
        st.success(f"SIMULATED endpoint running at {simulator.server.base_url} "
                   f"(model {SIMULATED_MODEL}); profile “Simulator (SIMULATED)” points at it.")
        stats = simulator.server.stats.snapshot()
        st.json(stats, expanded=False)
        if st.button("Stop simulator", icon=":material/stop:", key="settings_sim_stop"):
            simulator.stop()
            st.rerun()
    else:
        cols = st.columns(3)
        latency = cols[0].number_input("Latency (ms)", 0, 10_000, 300, step=50, key="settings_sim_latency")
        jitter = cols[1].number_input("Jitter (ms)", 0, 5_000, 100, step=10, key="settings_sim_jitter")
        faults = cols[2].slider("Rate-limit faults (429)", 0.0, 0.5, 0.0, 0.01, key="settings_sim_faults",
                                help="Share of requests answered with 429, to watch the retries.")
        if st.button("Start simulator", type="primary", icon=":material/science:",
                     key="settings_sim_start"):
            with feedback.reported():
                config = SimulatorConfig(
                    latency_ms=float(latency),
                    jitter_ms=float(min(jitter, latency)),
                    faults={"429": float(faults)} if faults else {},
                )
                server = simulator.start(config)
                save_simulator_profile(database, server.base_url, SIMULATED_MODEL)
                feedback.tell("success", f"SIMULATED endpoint started at {server.base_url}.")
            st.rerun()
