"""The sidebar every page shares: which dataset, and who is curating.

Both choices live in the URL (`?dataset=3&curator=ana`) so a reload or a shared link keeps
them, and in session state so they survive moving between pages (page links drop the query
string). The widgets use private keys fed from those durable values on every run, which
is what keeps them stable across pages.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from db.queries import DatasetOverview

DATASET_PARAM = "dataset"
CURATOR_PARAM = "curator"
DURABLE_PARAMS = (DATASET_PARAM, CURATOR_PARAM)
_DATASET = "dataset_id"
_CURATOR = "curator"
_DATASET_WIDGET = "_sidebar_dataset"
_CURATOR_WIDGET = "_sidebar_curator"


def _param_int(name: str) -> int | None:
    value = st.query_params.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _sync_param(name: str, value: str | None) -> None:
    if value:
        if st.query_params.get(name) != value:
            st.query_params[name] = value
    elif name in st.query_params:
        del st.query_params[name]


def choose_dataset(dataset_id: int) -> None:
    """Make `dataset_id` the selected dataset (e.g. after an upload or a deep link)."""
    st.session_state[_DATASET] = dataset_id
    _sync_param(DATASET_PARAM, str(dataset_id))


ITEM_LEVEL_PARAMS = ("item", "run", "status")


def _on_dataset_change() -> None:
    # Links to an item or a run belong to the dataset being left.
    for name in ITEM_LEVEL_PARAMS:
        if name in st.query_params:
            del st.query_params[name]
    choose_dataset(st.session_state[_DATASET_WIDGET])


def _on_curator_change() -> None:
    st.session_state[_CURATOR] = st.session_state[_CURATOR_WIDGET].strip()
    _sync_param(CURATOR_PARAM, st.session_state[_CURATOR])


def dataset_picker(datasets: Sequence[DatasetOverview], preferred: int | None) -> int | None:
    """The selected dataset id: `preferred`, else the URL's, else this session's, else newest."""
    ids = [d.id for d in datasets]
    if not ids:
        st.sidebar.caption("No dataset yet.")
        st.sidebar.page_link("pages/1_Upload.py", label="Upload one", icon=":material/upload:")
        return None
    for candidate in (preferred, _param_int(DATASET_PARAM), st.session_state.get(_DATASET)):
        if candidate in ids:
            selected = candidate
            break
    else:
        selected = ids[0]
    choose_dataset(selected)
    names = {d.id: d.name for d in datasets}
    st.session_state[_DATASET_WIDGET] = selected
    st.sidebar.selectbox(
        "Dataset",
        ids,
        format_func=lambda dataset_id: names[dataset_id],
        key=_DATASET_WIDGET,
        on_change=_on_dataset_change,
    )
    return selected


def curator_field(default: str = "") -> str:
    """The curator's name: typed once, kept in the URL and the session."""
    if _CURATOR not in st.session_state:
        st.session_state[_CURATOR] = (st.query_params.get(CURATOR_PARAM) or default).strip()
    name = st.session_state[_CURATOR]
    _sync_param(CURATOR_PARAM, name)
    st.session_state[_CURATOR_WIDGET] = name
    st.sidebar.text_input(
        "Curator",
        key=_CURATOR_WIDGET,
        on_change=_on_curator_change,
        placeholder="your name (recorded with every review)",
        max_chars=200,
    )
    return name
