"""Review: one item at a time with the keyboard, or a table to scan; deep links `?item=ID`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from db.engine import Database
from db.models import ItemStatus, QuestionType, RegenerateScope
from db.queries import (
    ANY_FLAG,
    ItemDetail,
    ItemFilter,
    count_items,
    item_detail,
    list_items,
    neighbours,
)
from ui import bulk_panel, feedback, team_panel
from ui.bootstrap import bootstrap
from ui.charts import STATUS_LABELS
from ui.item_card import render_history, render_item_card
from ui.resources import flag_choices
from vqa_engine import review
from vqa_engine.errors import ConfigError, ConflictError, VQAError
from vqa_engine.records import LETTERS
from vqa_engine.regeneration_target import regeneration_target
from vqa_engine.runs import list_runs

ITEM_PARAM = "item"
STATUS_PARAM = "status"
RUN_PARAM = "run"
PAGE_SIZE = 50
COUNT_CAP = 10_000  # beyond this the card says "10,000+" instead of counting every match
CARD, TABLE = "Card", "Table"
log = logging.getLogger("vqa_curator.ui")


def _item_param() -> int | None:
    value = st.query_params.get(ITEM_PARAM)
    return int(value) if value and value.isdigit() else None


_linked: dict[str, ItemDetail | None] = {}


def _linked_dataset(database: Database) -> int | None:
    """A deep link's item decides the dataset shown."""
    item_id = _item_param()
    if item_id is None:
        return None
    with database.read() as session:
        _linked["detail"] = item_detail(session, item_id)
    detail = _linked["detail"]
    return detail.item.dataset_id if detail else None


page = bootstrap("Review", icon=":material/rate_review:", prefer_dataset=_linked_dataset)
database = page.database
st.title("Review")
if page.dataset_id is None:
    st.info("Upload a dataset first.", icon=":material/info:")
    st.stop()
dataset_id = page.dataset_id


# ------------------------------------------------------------------ filters


def _seed_from_link(param: str, key: str, value: Callable[[str], Any]) -> None:
    """A link such as `?status=failed` sets the filter once; the widget owns it afterwards."""
    given = st.query_params.get(param)
    seen_key = f"_seen_{param}"
    if given and st.session_state.get(seen_key) != given:
        st.session_state[seen_key] = given
        try:
            st.session_state[key] = value(given)
        except ValueError:
            pass


_seed_from_link(STATUS_PARAM, "review_status", lambda v: [ItemStatus(v)])
_seed_from_link(RUN_PARAM, "review_run", int)
st.session_state.setdefault("review_status", [ItemStatus.GENERATED])
st.session_state.setdefault("review_view", CARD)

flags = flag_choices(database.url, dataset_id)
run_ids = [run.id for run in list_runs(database, dataset_id, limit=50)]
ANY = 0  # "any run"; None would read as "nothing selected" to the widget
if st.session_state.get("review_run") not in (ANY, *run_ids):
    st.session_state["review_run"] = ANY

def _filters_changed() -> None:
    """A new filter shows its own first item, not the one the old filter led to."""
    if ITEM_PARAM in st.query_params:
        del st.query_params[ITEM_PARAM]


columns = st.columns([3, 2, 1, 1, 2, 2])
statuses = columns[0].multiselect(
    "Status", list(ItemStatus), format_func=lambda s: STATUS_LABELS[s], key="review_status", on_change=_filters_changed,
    placeholder="any status",
)
types = columns[1].multiselect(
    "Type", list(QuestionType), format_func=lambda t: t.value.replace("_", " "),
    key="review_types", placeholder="any type", on_change=_filters_changed,
)
run_choice = columns[2].selectbox(
    "Run", [ANY, *run_ids], format_func=lambda r: "any" if r == ANY else f"run {r}",
    key="review_run", on_change=_filters_changed,
)
flag_choice = columns[3].selectbox(
    "Flag", ["", ANY_FLAG, *flags],
    format_func=lambda f: "any" if not f else ("flagged" if f == ANY_FLAG else f),
    key="review_flag", on_change=_filters_changed,
)
text = columns[4].text_input("Search", key="review_text", placeholder="question, answer or id",
                             on_change=_filters_changed)
view = columns[5].segmented_control("View", [CARD, TABLE], key="review_view") or CARD

item_filter = ItemFilter(
    dataset_id=dataset_id,
    statuses=tuple(statuses),
    question_types=tuple(types),
    run_id=run_choice or None,
    flag=flag_choice or None,
    text=text,
)


def _go(item_id: int | None) -> None:
    if item_id is not None:
        st.query_params[ITEM_PARAM] = str(item_id)


# ------------------------------------------------------------------ table view


def _open_from_table(table_key: str, ids: list[int]) -> None:
    rows = st.session_state[table_key].selection.rows
    if rows:
        _go(ids[rows[0]])
        st.session_state["review_view"] = CARD


def table_view() -> None:
    with database.read() as session:
        total = count_items(session, item_filter)
        pages = max(1, math.ceil(total / PAGE_SIZE))
        number = st.pagination(pages, key="review_table_page") if pages > 1 else 1
        number = min(number, pages)
        rows = list_items(session, item_filter, offset=(number - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    st.caption(f"{total} item(s) match; page {number} of {pages}. Select a row to open its card.")
    if not rows:
        return
    frame = pd.DataFrame(
        [
            {
                "item": row.id,
                "id": row.external_id,
                "status": STATUS_LABELS[row.status],
                "type": row.question_type.value.replace("_", " "),
                "question": row.question,
                "correct": row.correct_letter or "",
                "answer": row.answer or "",
                "flags": ", ".join(row.flags),
            }
            for row in rows
        ]
    )
    table_key = f"review_table_{number}"
    ids = [row.id for row in rows]
    st.dataframe(
        frame,
        hide_index=True,
        on_select=lambda: _open_from_table(table_key, ids),
        selection_mode="single-row",
        key=table_key,
        column_config={"question": st.column_config.TextColumn(width="large")},
    )


# ------------------------------------------------------------------ actions


def _act(done: str, call: Callable[[], object], advance_to: int | None = None) -> bool:
    try:
        call()
    except VQAError as exc:
        feedback.tell("error", str(exc))
        return False
    except Exception:  # noqa: BLE001 - never show a library's exception text
        log.exception("review action failed")
        feedback.tell("error", "the action failed unexpectedly; the server log has the details")
        return False
    feedback.tell("success", done)
    _go(advance_to)
    return True


def _decide(kind: str, item_id: int, version: int, next_id: int | None) -> None:
    action = {"accept": review.accept, "reject": review.reject}[kind]
    done = _act(
        f"Item {item_id} {kind}ed.",
        lambda: action(database, item_id, curator=page.curator, expected_version=version),
    )
    if done and st.session_state.get("review_advance", True):
        _go(_next_for_me() if team_panel.team_mode() else next_id)


def _next_for_me(skip: int | None = None) -> int | None:
    return team_panel.next_for_me(database, item_filter, page.curator, skip=skip)


def _skip_to_next_for_me(item_id: int) -> None:
    _go(_next_for_me(skip=item_id))


def _reshuffle(item_id: int, version: int) -> None:
    _act(
        f"Item {item_id}: options reshuffled.",
        lambda: review.reshuffle(database, item_id, curator=page.curator, expected_version=version),
    )


def _regenerate(item_id: int, version: int) -> None:
    reason = st.session_state.get(f"review_reason_{item_id}", "")
    scope = st.session_state.get(f"review_scope_{item_id}", RegenerateScope.WHOLE)
    typed_key = st.session_state.get(f"review_key_{item_id}") or None

    def call() -> None:
        target = regeneration_target(database, item_id, typed_key=typed_key)
        if not target.ready:
            raise ConfigError(target.key_missing or "no API key")
        result = review.regenerate(
            database, item_id, curator=page.curator, expected_version=version, scope=scope,
            reason=reason, endpoint=target.endpoint, settings=target.settings,
        )
        if page.host is not None and result.run_id is not None and target.endpoint.api_key:
            page.host.provide_key(result.run_id, target.endpoint.api_key)
        st.session_state[f"review_reason_{item_id}"] = ""

    what = "distractors" if scope is RegenerateScope.DISTRACTORS else "item"
    _act(f"Item {item_id}: new {what} requested; the card updates when it lands.", call)


_EDITING = "review_editing"


def _close_editor() -> None:
    st.session_state.pop(_EDITING, None)


def _open_editor(item_id: int, version: int) -> None:
    st.session_state[_EDITING] = (item_id, version)


@st.dialog("Edit item", width="large", on_dismiss=_close_editor)
def edit_dialog(item_id: int, version: int) -> None:
    """Open while session state says so, so it survives reruns of the whole page."""
    with database.read() as session:
        detail = item_detail(session, item_id)
    if detail is None:
        st.error(f"item {item_id} no longer exists")
        return
    item, generation = detail.item, detail.current
    options = dict(generation.options or {}) if generation else {}
    letter_now = generation.correct_letter if generation else None
    st.text(item.question)
    multiple_choice = item.question_type is QuestionType.MULTIPLE_CHOICE
    suffix = f"{item_id}_{version}"
    answer = st.text_input(
        "Correct answer", key=f"edit_answer_{suffix}",
        value=(options.get(letter_now) if letter_now in options else None)
        or (generation.answer if generation else "") or "",
    )
    distractor_lines: list[str] = []
    letter: str | None = None
    if multiple_choice:
        current = [str(text) for key, text in options.items() if key != letter_now]
        raw = st.text_area("Distractors, one per line", value="\n".join(current), height=140,
                           key=f"edit_distractors_{suffix}")
        distractor_lines = [line.strip() for line in raw.splitlines() if line.strip()]
        letters = list(LETTERS[: len(distractor_lines) + 1])
        index = letters.index(letter_now) if letter_now in letters else 0
        letter = st.radio("Correct letter", letters, index=index, horizontal=True,
                          key=f"edit_letter_{suffix}")
    explanation = st.text_area(
        "Explanation", value=(generation.explanation if generation else "") or "", height=100,
        key=f"edit_explanation_{suffix}",
    )
    reason = st.text_input("Reason (optional, kept in the history)", key=f"edit_reason_{suffix}")
    if st.button("Save edit", type="primary", icon=":material/save:", key="edit_save"):
        try:
            review.edit(
                database, item_id, curator=page.curator, expected_version=version,
                answer=answer,
                distractors=distractor_lines if multiple_choice else None,
                correct_letter=letter,
                explanation=explanation,
                reason=reason or None,
            )
        except ConflictError as exc:
            _close_editor()
            feedback.tell("error", str(exc))
            st.rerun()
        except VQAError as exc:
            st.error(str(exc))
        else:
            _close_editor()
            feedback.tell("success", f"Item {item_id} edited.")
            st.rerun()


@st.fragment(run_every=1)
def watch_item(item_id: int, version: int) -> None:
    """While a generation is on its way, look for it every second."""
    with database.read() as session:
        fresh = item_detail(session, item_id)
    if fresh is not None and fresh.item.version != version:
        st.rerun()
    st.caption("Waiting for the engine…")


def card_view() -> None:
    item_id = _item_param()
    if item_id is None and team_panel.team_mode() and page.curator:
        item_id = _next_for_me()
        _go(item_id)
    detail = _linked.get("detail") if item_id is not None else None
    if item_id is not None and (detail is None or detail.item.id != item_id):
        with database.read() as session:
            detail = item_detail(session, item_id)
    if detail is None or detail.item.dataset_id != dataset_id:
        if item_id is not None and detail is None:
            st.warning(f"Item {item_id} does not exist (any more); showing the first match instead.")
        with database.read() as session:
            first = list_items(session, item_filter, limit=1)
            detail = item_detail(session, first[0].id) if first else None
        if detail is None:
            st.info("No item matches the filter.", icon=":material/filter_alt_off:")
            return
        _go(detail.item.id)
    item = detail.item
    with database.read() as session:
        previous_id, next_id = neighbours(session, item_filter, item.id)
        matching = count_items(session, item_filter, cap=COUNT_CAP)
        entries = review.history(session, item.id)

    nav = st.columns([1, 4, 1])
    nav[0].button("Previous", icon=":material/arrow_back:", shortcut="P", key="review_previous",
                  disabled=previous_id is None, on_click=_go, args=(previous_id,))
    shown = f"{COUNT_CAP:,}+" if matching >= COUNT_CAP else str(matching)
    nav[1].caption(f"{shown} item(s) match the filter.")
    if team_panel.team_mode():
        nav[2].button("Next for me", icon=":material/arrow_forward:", shortcut="N",
                      key="review_next", on_click=_skip_to_next_for_me, args=(item.id,),
                      help="An item no other curator is looking at; this one is freed.")
    else:
        nav[2].button("Next", icon=":material/arrow_forward:", shortcut="N", key="review_next",
                      disabled=next_id is None, on_click=_go, args=(next_id,))

    team_panel.render_lease_notice(database, item.id, page.curator)
    with st.container(border=True):
        render_item_card(detail, page.data_dir, image_key=f"review_enlarge_{item.id}")

    version = item.version
    no_curator = not page.curator
    if no_curator:
        st.warning("Type your name under **Curator** in the sidebar to review.",
                   icon=":material/person:")
    decided = detail.current is not None and item.status in review.DECIDABLE
    multiple_choice = item.question_type is QuestionType.MULTIPLE_CHOICE
    with st.container(horizontal=True, gap="small"):
        st.button("Accept", type="primary", icon=":material/check:", shortcut="A",
                  key="review_accept", disabled=no_curator or not decided,
                  on_click=_decide, args=("accept", item.id, version, next_id))
        st.button("Reject", icon=":material/close:", shortcut="X", key="review_reject",
                  disabled=no_curator or not decided,
                  on_click=_decide, args=("reject", item.id, version, next_id))
        st.button("Reshuffle", icon=":material/shuffle:", shortcut="S", key="review_reshuffle",
                  disabled=no_curator or not decided or not multiple_choice,
                  on_click=_reshuffle, args=(item.id, version))
        st.button("Edit", icon=":material/edit:", shortcut="E", key="review_edit",
                  disabled=no_curator or item.status is ItemStatus.GENERATING,
                  on_click=_open_editor, args=(item.id, version))
        st.toggle("Next item after accept / reject", key="review_advance", value=True)

    regeneratable = item.status in review.REGENERATABLE
    with st.container(border=True):
        cols = st.columns([5, 3, 2], vertical_alignment="bottom")
        cols[0].text_input(
            "Reason for regenerating (optional, passed to the model)",
            key=f"review_reason_{item.id}", max_chars=500,
            placeholder="e.g. the answer ignores the small red car on the left",
        )
        scopes = [RegenerateScope.WHOLE] + ([RegenerateScope.DISTRACTORS] if multiple_choice else [])
        cols[1].radio(
            "Regenerate", scopes, horizontal=True, key=f"review_scope_{item.id}",
            format_func=lambda s: "whole item" if s is RegenerateScope.WHOLE else "distractors only",
        )
        cols[2].button("Regenerate", icon=":material/autorenew:", shortcut="G",
                       key="review_regenerate", disabled=no_curator or not regeneratable,
                       on_click=_regenerate, args=(item.id, version))
        if regeneratable:
            try:
                target = regeneration_target(database, item.id)
            except VQAError:
                target = None
            if target is not None and not target.ready:
                st.text_input("API key for the regeneration (kept in memory only)",
                              type="password", key=f"review_key_{item.id}",
                              help=target.key_missing)

    editing = st.session_state.get(_EDITING)
    if editing and editing[0] == item.id:
        edit_dialog(*editing)
    elif editing:
        _close_editor()

    if item.status in (ItemStatus.PENDING, ItemStatus.GENERATING):
        watch_item(item.id, version)

    with st.expander(f"History ({len(entries)})", icon=":material/history:"):
        render_history(entries, undo_buttons=lambda shown: history_undo(shown, item.id))


# ------------------------------------------------------------------ bulk actions and undo


def history_undo(entries: Sequence[review.HistoryEntry], item_id: int) -> None:
    with database.read() as session:
        blockers = review.undo_blockers(session, item_id)
    bulk_panel.render_undo_buttons(entries, blockers, database=database, curator=page.curator)


bulk_panel.render_bulk_actions(database, item_filter, curator=page.curator, host=page.host)
team_panel.render_team_panel(database, dataset_id, page.curator, item_param=ITEM_PARAM)


# ------------------------------------------------------------------ view

if view == TABLE:
    table_view()
else:
    card_view()
