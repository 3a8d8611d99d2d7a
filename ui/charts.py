"""Charts used on several pages, with one colour per item status everywhere."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import streamlit as st

from db.models import ItemStatus
from vqa_engine.records import LETTERS

STATUS_COLOURS = {
    ItemStatus.PENDING: "#b0b7c3",
    ItemStatus.GENERATING: "#4c8bf5",
    ItemStatus.GENERATED: "#f5a623",
    ItemStatus.FAILED: "#e5484d",
    ItemStatus.ACCEPTED: "#30a46c",
    ItemStatus.REJECTED: "#6e6e6e",
}
STATUS_LABELS = {
    ItemStatus.PENDING: "pending",
    ItemStatus.GENERATING: "generating",
    ItemStatus.GENERATED: "to review",
    ItemStatus.FAILED: "failed",
    ItemStatus.ACCEPTED: "accepted",
    ItemStatus.REJECTED: "rejected",
}


def status_frame(rows: Mapping[str, Mapping[ItemStatus, int]]) -> pd.DataFrame:
    """One row per name, one column per status label (in workflow order)."""
    return pd.DataFrame(
        [[counts.get(status, 0) for status in ItemStatus] for counts in rows.values()],
        index=pd.Index(list(rows), name="dataset"),
        columns=[STATUS_LABELS[status] for status in ItemStatus],
    )


def status_chart(rows: Mapping[str, Mapping[ItemStatus, int]], *, height: int | None = None) -> None:
    """Stacked horizontal bars: items per status for each dataset (or run)."""
    frame = status_frame(rows)
    st.bar_chart(
        frame,
        horizontal=True,
        stack=True,
        color=[STATUS_COLOURS[status] for status in ItemStatus],
        x_label="items",
        y_label="",
        height=height or max(120, 60 + 40 * len(frame)),
    )


def letter_chart(histogram: Mapping[str, int]) -> None:
    """How often each letter is the correct one; letters never correct show as zero."""
    last = max((LETTERS.index(letter) for letter in histogram if letter in LETTERS), default=-1)
    letters = list(LETTERS[: last + 1]) + sorted(set(histogram) - set(LETTERS))
    frame = pd.DataFrame(
        {"correct letter": letters, "items": [histogram.get(letter, 0) for letter in letters]}
    )
    st.bar_chart(frame, x="correct letter", y="items", sort=False, height=220)


def expected_letter_chart(counts: Mapping[str, int], expected: float | None) -> None:
    """Bars per correct letter, in letter order, with a dashed line at an even spread."""
    import altair as alt

    frame = pd.DataFrame({"correct letter": list(counts), "items": list(counts.values())})
    bars = alt.Chart(frame).mark_bar().encode(
        x=alt.X("correct letter:N", sort=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("items:Q"),
        tooltip=["correct letter", "items"],
    )
    chart: alt.LayerChart | alt.Chart = bars
    if expected is not None:
        rule = alt.Chart(pd.DataFrame({"even spread": [expected]})).mark_rule(
            strokeDash=[4, 4], color="#6e6e6e"
        ).encode(y="even spread:Q", tooltip=[alt.Tooltip("even spread:Q", format=".1f")])
        chart = bars + rule
    st.altair_chart(chart.properties(height=220))


def count_chart(counts: Mapping[str, int], *, label: str, value: str = "items") -> None:
    """Horizontal bars, largest first: how many items each name counts."""
    frame = pd.DataFrame({label: list(counts), value: list(counts.values())})
    st.bar_chart(frame, x=label, y=value, horizontal=True, sort=f"-{value}", y_label="",
                 height=max(120, 60 + 32 * len(frame)))


def decision_chart(decisions: Mapping[str, tuple[int, int]]) -> None:
    """Stacked horizontal bars per curator: accepted and rejected items."""
    accepted, rejected = STATUS_LABELS[ItemStatus.ACCEPTED], STATUS_LABELS[ItemStatus.REJECTED]
    frame = pd.DataFrame(
        [[a, r] for a, r in decisions.values()],
        index=pd.Index(list(decisions), name="curator"),
        columns=[accepted, rejected],
    )
    st.bar_chart(
        frame,
        horizontal=True,
        stack=True,
        color=[STATUS_COLOURS[ItemStatus.ACCEPTED], STATUS_COLOURS[ItemStatus.REJECTED]],
        x_label="decisions",
        y_label="",
        height=max(120, 60 + 40 * len(frame)),
    )
