"""Dataset health: letters, flags, length bias, types, runs, curators and their agreement."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from db.models import ItemStatus
from ui.bootstrap import bootstrap
from ui.charts import count_chart, decision_chart, expected_letter_chart, status_chart
from vqa_engine.errors import VQAError
from vqa_engine.health import DEFAULT_STATUSES, dataset_health, format_p_value, letter_reading

COVERAGE = {
    "accepted and not yet reviewed": DEFAULT_STATUSES,
    "accepted only": (ItemStatus.ACCEPTED,),
    "every generated item (rejected too)": (
        ItemStatus.GENERATED, ItemStatus.ACCEPTED, ItemStatus.REJECTED,
    ),
}


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


page = bootstrap("Health", icon=":material/monitor_heart:")
st.title("Dataset health")
if page.dataset is None:
    st.info("Upload a dataset first.", icon=":material/info:")
    st.stop()
dataset = page.dataset

coverage = st.radio("Letters, flags and length bias cover", list(COVERAGE), horizontal=True,
                    key="health_coverage")
try:
    report = dataset_health(page.database, dataset.id, statuses=COVERAGE[coverage])
except VQAError as exc:
    st.error(str(exc))
    st.stop()
agreement = report.agreement

metrics = st.columns(5)
metrics[0].metric("Items", report.items, help=f"{report.covered} covered by the choice above")
metrics[1].metric("Flagged", report.flagged,
                  help="Covered items whose current content carries at least one quality flag")
metrics[2].metric(
    "Length bias", _share(report.length_bias_rate),
    help="Multiple-choice items whose correct option is the only longest; "
         f"about {_share(report.length_bias_chance)} if length said nothing",
)
lowest = min((t.p_value for t in report.letters if t.p_value is not None), default=None)
metrics[3].metric("Letter spread", "–" if lowest is None else format_p_value(lowest),
                  help="Lowest chi-square p-value against evenly spread correct letters")
metrics[4].metric(
    "Agreement", _share(agreement.rate),
    help=f"{agreement.agreeing} of {agreement.double_reviewed} items decided by two or more "
         "curators got the same decision from all of them",
)

st.subheader("Correct letters")
if not report.letters:
    st.caption("No multiple-choice item in this selection.")
for test in report.letters:
    with st.container(border=True):
        st.markdown(f"**{test.option_count} options** · {test.total} item(s)")
        expected = test.total / test.option_count if test.option_count else None
        expected_letter_chart(test.counts, expected if test.option_count >= 2 else None)
        st.caption(
            f"How often each letter is the correct one among the {test.total} item(s) with "
            f"{test.option_count} options; the dashed line is an even spread. Chi-square "
            + (f"{test.statistic:.2f} with {test.degrees_of_freedom} degree(s) of freedom."
               if test.statistic is not None else "not computed.")
        )
        reading = letter_reading(test)
        if test.uneven:
            st.warning(reading, icon=":material/balance:")
        else:
            st.caption(reading)

st.subheader("Quality flags")
if report.flag_counts:
    count_chart(report.flag_counts, label="flag")
    st.caption(f"Covered items whose current content carries each flag ({report.flagged} "
               f"of {report.covered} carry at least one; an item may carry several).")
else:
    st.caption("No flagged item in this selection.")
if report.multiple_choice:
    st.caption(
        f"Length bias: {report.length_bias_items} of {report.multiple_choice} multiple-choice "
        f"items ({_share(report.length_bias_rate)}) have the correct option as the only longest; "
        f"about {_share(report.length_bias_chance)} would by chance."
    )

st.subheader("By question type")
if report.types:
    status_chart({t.question_type.value: {
        ItemStatus.PENDING: t.pending, ItemStatus.GENERATED: t.generated,
        ItemStatus.FAILED: t.failed, ItemStatus.ACCEPTED: t.accepted,
        ItemStatus.REJECTED: t.rejected,
    } for t in report.types})
    st.caption("Items of each question type by status, over the whole dataset.")
    st.dataframe(pd.DataFrame([
        {"question type": t.question_type.value, "items": t.items, "pending": t.pending,
         "to review": t.generated, "failed": t.failed, "accepted": t.accepted,
         "rejected": t.rejected, "flagged": t.flagged}
        for t in report.types
    ]), hide_index=True)
else:
    st.caption("No item yet.")

st.subheader("By run")
if report.runs:
    st.dataframe(pd.DataFrame([
        {"run": r.run_id, "status": r.status.value, "model": r.model or "", "items": r.items,
         "generated": r.generated, "failed": r.failed, "requests": r.requests,
         "mean latency (ms)": None if r.mean_latency_ms is None else round(r.mean_latency_ms),
         "flagged": _share(r.flagged_share)}
        for r in report.runs
    ]), hide_index=True)
    shares = {f"run {r.run_id}": round(100 * r.flagged_share, 1)
              for r in report.runs if r.flagged_share is not None}
    if shares:
        count_chart(shares, label="run", value="flagged %")
        st.caption("Share of each run's successful generations that carry at least one flag.")
else:
    st.caption("No run yet.")

st.subheader("Curators")
if report.curators:
    decision_chart({c.curator: (c.accepted, c.rejected) for c in report.curators})
    st.caption("Standing decisions per curator: not undone, made on the item's current "
               "content, the latest one per item.")
else:
    st.caption("No decisions yet.")
columns = st.columns(3)
columns[0].metric("Items agreed on", f"{agreement.agreeing} of {agreement.double_reviewed}",
                  help="Items where every curator who decided made the same decision")
columns[1].metric("Decided by two or more curators", agreement.double_reviewed)
columns[2].metric(
    "Still need a review", agreement.needs_reviews,
    help=f"Generated, accepted or rejected items with fewer than {agreement.reviews_required} "
         "curator decision(s)",
)
if agreement.double_reviewed == 0:
    st.caption("No item decided by two curators yet: agreement shows once an item has been.")
