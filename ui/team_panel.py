"""Team review on the Review page: "next for me", who is looking at what, and progress."""

from __future__ import annotations

import streamlit as st

from db.engine import Database
from db.queries import ItemFilter
from ui import feedback
from ui.charts import decision_chart
from vqa_engine.team_review import (
    MAX_REVIEWS_REQUIRED,
    claim_next,
    lease_of,
    release,
    reviews_required,
    set_reviews_required,
    team_progress,
)

TEAM_KEY = "review_team"


def team_mode() -> bool:
    return bool(st.session_state.get(TEAM_KEY, False))


def next_for_me(database: Database, item_filter: ItemFilter, curator: str,
                skip: int | None = None) -> int | None:
    """The item this curator should look at next (leased to them), or None when done."""
    item_id: int | None = None
    with feedback.reported():
        item_id = claim_next(database, item_filter, curator=curator, skip=skip)
        if item_id is None:
            feedback.tell("info", "Nothing left for you to review in this filter.")
    return item_id


def _toggle_team(database: Database, dataset_id: int, curator: str, item_param: str) -> None:
    """Joining drops the item shown (the page then claims one); leaving frees the lease."""
    if st.session_state.get(TEAM_KEY):
        if item_param in st.query_params:
            del st.query_params[item_param]
    elif curator:
        with feedback.reported():
            release(database, dataset_id, curator=curator)


def _set_required(database: Database, dataset_id: int) -> None:
    with feedback.reported():
        count = int(st.session_state["review_required"])
        set_reviews_required(database, dataset_id, count)
        feedback.tell("success", f"Each item now needs {count} curator(s).")


def render_team_panel(database: Database, dataset_id: int, curator: str, *,
                      item_param: str) -> None:
    """Toggle, curators per item, and the team's progress with one bar per curator.

    Progress reads every standing decision of the dataset, so it runs only while open.
    """
    panel = st.expander("Team review", icon=":material/groups:", expanded=team_mode(),
                        key="team_open", on_change="rerun")
    if not panel.open:
        return
    with panel:
        columns = st.columns([2, 2, 3], vertical_alignment="bottom")
        columns[0].toggle(
            "Team mode", key=TEAM_KEY, disabled=not curator,
            on_change=_toggle_team, args=(database, dataset_id, curator, item_param),
            help="Next hands you an item no other curator is looking at (reserved for "
                 "5 minutes) and skips items you already decided.",
        )
        columns[1].number_input(
            "Curators per item", min_value=1, max_value=MAX_REVIEWS_REQUIRED, step=1,
            value=reviews_required(database, dataset_id), key="review_required",
            on_change=_set_required, args=(database, dataset_id),
            help="2 or more asks for a double review: each item goes to that many "
                 "different curators; the Health page shows how often they agree.",
        )
        progress = team_progress(database, dataset_id)
        agreed = progress.agreement
        columns[2].progress(
            progress.fraction,
            text=f"{agreed.fully_reviewed:,} of {agreed.reviewable:,} item(s) reviewed by "
                 f"{agreed.reviews_required} curator(s)",
        )
        if agreed.rate is not None:
            st.caption(f"Curators agree on {agreed.agreeing:,} of {agreed.double_reviewed:,} "
                       f"item(s) decided by two or more ({agreed.rate:.0%}).")
        if not progress.curators:
            st.caption("No decisions yet.")
            return
        decision_chart({c.curator: (c.accepted, c.rejected) for c in progress.curators},
                       title="standing decisions")
        reviewing = [f"{c.curator} (item {c.leased_item})" for c in progress.curators
                     if c.leased_item is not None]
        if reviewing:
            st.caption("Reviewing now: " + ", ".join(reviewing))


def render_lease_notice(database: Database, item_id: int, curator: str) -> None:
    """Say so when another curator holds this item, so two people don't decide it at once."""
    lease = lease_of(database, item_id)
    if lease is not None and lease.curator != curator:
        st.info(f"{lease.curator} is reviewing this item (reserved until "
                f"{lease.expires_at:%H:%M} UTC).", icon=":material/person:")
