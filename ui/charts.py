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
