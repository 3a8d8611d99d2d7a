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


BAR_SIZE = 22
ROW_HEIGHT = 34


def horizontal_bars(
    frame: pd.DataFrame, *, row: str, value: str, series: str | None = None,
    colours: Mapping[str, str] | None = None, value_title: str | None = None,
) -> None:
    """One thick bar per row (stacked by `series`), rows in the frame's order.

    Drawn with Altair rather than `st.bar_chart` so a chart of one or two rows keeps
    readable bars instead of shrinking them under its legend and axis titles.
    """
    import altair as alt

    if frame.empty:
        return
    rows = list(dict.fromkeys(frame[row]))
    encoding: dict[str, object] = {
        "x": alt.X(f"sum({value}):Q", title=value_title or value,
                   axis=alt.Axis(tickMinStep=1, format="d")),
        "y": alt.Y(f"{row}:N", sort=rows, title=None),
        "tooltip": [row, *([series] if series else []), value],
    }
    if series is not None:
        domain = list(colours) if colours else list(dict.fromkeys(frame[series]))
        scale = alt.Scale(domain=domain, range=list(colours.values())) if colours else alt.Scale()
        encoding["color"] = alt.Color(f"{series}:N", scale=scale, sort=domain,
                                      legend=alt.Legend(orient="top", title=None))
        encoding["order"] = alt.Order("series_order:Q")
        frame = frame.assign(series_order=frame[series].map({n: i for i, n in enumerate(domain)}))
    chart = alt.Chart(frame).mark_bar(size=BAR_SIZE).encode(**encoding)
    st.altair_chart(chart.properties(height=alt.Step(ROW_HEIGHT)))


def status_chart(rows: Mapping[str, Mapping[ItemStatus, int]]) -> None:
    """Stacked horizontal bars: items per status for each dataset (or run)."""
    frame = pd.DataFrame(
        [
            {"name": name, "status": STATUS_LABELS[status], "items": counts.get(status, 0)}
            for name, counts in rows.items()
            for status in ItemStatus
        ]
    )
    colours = {STATUS_LABELS[status]: STATUS_COLOURS[status] for status in ItemStatus}
    horizontal_bars(frame, row="name", value="items", series="status", colours=colours)


def letter_chart(histogram: Mapping[str, int]) -> None:
    """How often each letter is the correct one; letters never correct show as zero."""
    last = max((LETTERS.index(letter) for letter in histogram if letter in LETTERS), default=-1)
    letters = list(LETTERS[: last + 1]) + sorted(set(histogram) - set(LETTERS))
    expected_letter_chart({letter: histogram.get(letter, 0) for letter in letters}, None)


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
    ranked = sorted(counts.items(), key=lambda pair: -pair[1])
    frame = pd.DataFrame({label: [n for n, _ in ranked], value: [c for _, c in ranked]})
    horizontal_bars(frame, row=label, value=value)


def decision_chart(decisions: Mapping[str, tuple[int, int]], *, title: str = "decisions") -> None:
    """Stacked horizontal bars per curator: accepted and rejected items."""
    accepted, rejected = STATUS_LABELS[ItemStatus.ACCEPTED], STATUS_LABELS[ItemStatus.REJECTED]
    frame = pd.DataFrame(
        [
            {"curator": name, "decision": label, "items": count}
            for name, (yes, no) in decisions.items()
            for label, count in ((accepted, yes), (rejected, no))
        ]
    )
    colours = {accepted: STATUS_COLOURS[ItemStatus.ACCEPTED],
               rejected: STATUS_COLOURS[ItemStatus.REJECTED]}
    horizontal_bars(frame, row="curator", value="items", series="decision", colours=colours,
                    value_title=title)
