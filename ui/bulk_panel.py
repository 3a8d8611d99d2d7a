"""Bulk actions, letter balancing and their undo: the widgets over `vqa_engine.bulk`.

Every bulk change goes preview -> confirm -> feedback: the first button only stores the
preview's token in session state; the confirmation applies exactly what was previewed (the
engine refuses if the items changed meanwhile). Recent batches are listed with an Undo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import streamlit as st

from db.engine import Database
from db.models import BulkAction, ItemStatus
from db.queries import ItemFilter
from ui import feedback
from vqa_engine import bulk, review
from vqa_engine.balance import Histogram, balance_letters, plan_balance
from vqa_engine.errors import ConfigError, ValidationError
from vqa_engine.regeneration_target import regeneration_target

if TYPE_CHECKING:
    from vqa_engine.host import EngineHost

_PENDING = "bulk_pending"
_PENDING_BALANCE = "balance_pending"
RECENT_BATCHES = 5
HISTORY_UNDO_ROWS = 10


# ------------------------------------------------------------------ bulk actions


def _ask(action: BulkAction, token: str, item_filter: ItemFilter) -> None:
    st.session_state[_PENDING] = {"action": action, "token": token, "filter": item_filter}


def _cancel() -> None:
    st.session_state.pop(_PENDING, None)


@feedback.action
def _confirm(database: Database, curator: str, host: EngineHost | None) -> None:
    pending = st.session_state.pop(_PENDING, None)
    if pending is None:
        return
    action: BulkAction = pending["action"]
    item_filter: ItemFilter = pending["filter"]
    extra: dict[str, Any] = {}
    target = None
    if action is BulkAction.REGENERATE:
        first = bulk.first_eligible(database, item_filter, action)
        if first is None:
            raise ValidationError("no item of the filter needs regenerating any more")
        target = regeneration_target(database, first,
                                     typed_key=st.session_state.get("bulk_key") or None)
        if not target.ready:
            raise ConfigError(target.key_missing or "no API key")
        extra = {"endpoint": target.endpoint, "settings": target.settings,
                 "reason": st.session_state.get("bulk_reason") or None}
    result = bulk.apply(database, item_filter, action, curator=curator,
                        token=pending["token"], **extra)
    if host is not None and target is not None and result.run_id is not None \
            and target.endpoint.api_key:
        host.provide_key(result.run_id, target.endpoint.api_key)
    done = f"{bulk.ACTION_LABELS[action].capitalize()}: {result.changed} item(s) changed"
    if result.run_id is not None:
        done += f", queued in run {result.run_id}"
    if result.skipped:
        done += f"; {result.skipped} changed meanwhile and left alone"
    feedback.tell("success", done + f" (batch {result.batch_id}, undoable below).")


def render_bulk_actions(
    database: Database, item_filter: ItemFilter, *, curator: str, host: EngineHost | None
) -> None:
    """The "Bulk actions" expander of the Review page, on its current filter.

    Its queries run only while it is open, so the page's reruns stay cheap.
    """
    panel = st.expander("Bulk actions", icon=":material/select_all:", key="bulk_open",
                        on_change="rerun")
    if not panel.open:
        _cancel()
        return
    with panel:
        action = st.selectbox("Action", bulk.REVIEW_PAGE_ACTIONS, key="bulk_action",
                              format_func=lambda a: bulk.ACTION_LABELS[a])
        shown = bulk.preview(database, item_filter, action)
        st.text(shown.sentence[0].upper() + shown.sentence[1:] + ".")
        if action is BulkAction.REGENERATE:
            st.text_input("Reason (optional, passed to the model)", key="bulk_reason",
                          max_chars=500)
            first = bulk.first_eligible(database, item_filter, action)
            target = regeneration_target(database, first) if first is not None else None
            if target is not None and not target.ready:
                st.text_input("API key for the regeneration (kept in memory only)",
                              type="password", key="bulk_key", help=target.key_missing)
        pending = st.session_state.get(_PENDING)
        if pending is not None and (pending["action"] is not action
                                    or pending["filter"] != item_filter):
            _cancel()
            pending = None
        if pending is not None and pending["token"] != shown.token:
            _cancel()
            pending = None
            st.info("The matching items changed meanwhile; check the preview above again.",
                    icon=":material/info:")
        if not curator:
            st.caption("Type your name under **Curator** in the sidebar to use bulk actions.")
        if pending is None:
            st.button(f"{bulk.ACTION_LABELS[action].capitalize()}…", key="bulk_apply",
                      icon=":material/playlist_add_check:",
                      disabled=not curator or shown.eligible == 0,
                      on_click=_ask, args=(action, shown.token, item_filter))
        else:
            st.warning(f"Confirm: {shown.sentence}. One batch, undoable below.",
                       icon=":material/help:")
            with st.container(horizontal=True, gap="small"):
                st.button("Confirm", type="primary", key="bulk_confirm",
                          icon=":material/check:", on_click=_confirm,
                          args=(database, curator, host))
                st.button("Cancel", key="bulk_cancel", on_click=_cancel)
        st.divider()
        st.caption("Recent bulk actions")
        assert item_filter.dataset_id is not None
        render_recent_batches(database, item_filter.dataset_id, curator=curator)


# ------------------------------------------------------------------ recent batches


@feedback.action
def _undo_batch(database: Database, batch_id: int, curator: str) -> None:
    result = bulk.undo_batch(database, batch_id, curator=curator)
    text = f"Batch {batch_id} undone: {result.restored} item(s) restored"
    if result.already_undone:
        text += f" ({result.already_undone} had been undone one by one)"
    feedback.tell("success", text + ".")


def render_recent_batches(
    database: Database, dataset_id: int, *, curator: str, limit: int = RECENT_BATCHES
) -> None:
    batches = bulk.list_batches(database, dataset_id, limit)
    if not batches:
        st.caption("No bulk action yet.")
        return
    for batch in batches:
        with st.container(horizontal=True, vertical_alignment="center", gap="small"):
            st.text(
                f"#{batch.id} {bulk.ACTION_LABELS[batch.action]} · {batch.item_count} item(s) · "
                f"{batch.curator} · {batch.created_at:%Y-%m-%d %H:%M} · {batch.description}",
                width="stretch",
            )
            if batch.undone:
                st.badge(f"undone by {batch.undone_by}", color="gray")
            else:
                st.button("Undo", key=f"bulk_undo_{batch.id}", icon=":material/undo:",
                          disabled=not curator, on_click=_undo_batch,
                          args=(database, batch.id, curator),
                          help="Put every item of this batch back as it was before it")


# ------------------------------------------------------------------ single undo


@feedback.action
def undo_event(database: Database, event_id: int, curator: str) -> None:
    result = review.undo(database, event_id, curator=curator)
    feedback.tell("success", f"Item {result.item_id}: decision undone.")


def render_undo_buttons(
    entries: Sequence[review.HistoryEntry],
    blockers: Mapping[int, str | None],
    *,
    database: Database,
    curator: str,
) -> None:
    """An Undo button for each of the newest review entries of an item's history."""
    decisions = [e for e in entries if e.kind == "review" and e.event_id is not None]
    for entry in decisions[:HISTORY_UNDO_ROWS]:
        assert entry.event_id is not None
        why_not = blockers.get(entry.event_id)
        if not curator:
            why_not = "type your name under Curator in the sidebar first"
        with st.container(horizontal=True, vertical_alignment="center", gap="small"):
            st.text(f"{entry.summary} by {entry.actor}, {entry.at:%Y-%m-%d %H:%M}",
                    width="stretch")
            st.button("Undo", key=f"history_undo_{entry.event_id}", icon=":material/undo:",
                      disabled=why_not is not None,
                      help=why_not or "Put the item back as it was before this",
                      on_click=undo_event, args=(database, entry.event_id, curator))


# ------------------------------------------------------------------ balance letters


def _ask_balance(seed: int, moving: int) -> None:
    st.session_state[_PENDING_BALANCE] = {"seed": seed, "moving": moving}


def _cancel_balance() -> None:
    st.session_state.pop(_PENDING_BALANCE, None)


@feedback.action
def _confirm_balance(database: Database, dataset_id: int, statuses: tuple[ItemStatus, ...],
                     curator: str) -> None:
    pending = st.session_state.pop(_PENDING_BALANCE, None)
    if pending is None:
        return
    summary = balance_letters(database, dataset_id, curator=curator, seed=pending["seed"],
                              statuses=statuses)
    text = f"Letters balanced: {summary.changed} item(s) re-ordered"
    if summary.skipped:
        text += f", {summary.skipped} changed meanwhile and left alone"
    if summary.batch_id is not None:
        text += f" (batch {summary.batch_id}, undoable below)"
    feedback.tell("success", text + ".")


def _histogram_lines(before: Histogram, after: Histogram) -> str:
    lines = []
    for count, letters in before.items():
        moved = after.get(count, {})
        lines.append(f"{count} options: now " + " ".join(f"{k}={v}" for k, v in letters.items())
                     + "  →  after " + " ".join(f"{k}={v}" for k, v in moved.items()))
    return "\n".join(lines)


def render_balance_panel(
    database: Database, dataset_id: int, statuses: tuple[ItemStatus, ...], *, curator: str
) -> None:
    """The Export page's "Balance letters" action over the selected items.

    Planning reads every selected item, so it runs only while the expander is open.
    """
    panel = st.expander("Balance letters", icon=":material/balance:", key="balance_open",
                        on_change="rerun")
    if not panel.open:
        _cancel_balance()
        return
    with panel:
        st.caption("Re-orders options so that, per option count, every letter is correct "
                   "within one time of the others; texts never change, and each moved item "
                   "gets a review event. One batch, undoable below.")
        seed = int(st.number_input("Seed", min_value=0, value=0, step=1, key="balance_seed"))
        plan = plan_balance(database, dataset_id, seed=seed, statuses=statuses)
        if not plan.total:
            st.caption("No multiple-choice item with options in this selection.")
        else:
            st.text(_histogram_lines(plan.histogram_before, plan.histogram_after))
            st.text(f"{plan.moving} of {plan.total} item(s) would move.")
        pending = st.session_state.get(_PENDING_BALANCE)
        if pending is not None and pending["seed"] != seed:
            _cancel_balance()
            pending = None
        if not curator:
            st.caption("Type your name under **Curator** in the sidebar to balance.")
        if pending is None:
            st.button(f"Balance letters ({plan.moving} item(s) move)…", key="balance_apply",
                      icon=":material/balance:", disabled=not curator or plan.moving == 0,
                      on_click=_ask_balance, args=(seed, plan.moving))
        else:
            st.warning(f"Confirm: re-order {plan.moving} item(s) with seed {seed}.",
                       icon=":material/help:")
            with st.container(horizontal=True, gap="small"):
                st.button("Confirm", type="primary", key="balance_confirm",
                          icon=":material/check:", on_click=_confirm_balance,
                          args=(database, dataset_id, statuses, curator))
                st.button("Cancel", key="balance_cancel", on_click=_cancel_balance)
        st.divider()
        st.caption("Recent bulk actions")
        render_recent_batches(database, dataset_id, curator=curator)
