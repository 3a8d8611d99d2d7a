"""Time of the curation features on a large dataset (prints, never asserts).

    .venv/bin/python benchmarks/curation_benchmark.py [--items 100000] [--repeat 3]
                                                      [--apply-items 10000] [--claims 50]

Builds a temporary SQLite database with one dataset of `--items` items (bulk Core inserts):
80 % multiple choice with 3 to 5 options and letters weighted towards A, 20 % fill-in-blank;
10 % of generations carry a quality flag. The first half of the dataset has been reviewed
once, in source order, by curator "ana" (90 % accepted, 10 % rejected: one decision event
per item); the second half is 90 % generated, 5 % failed, 5 % pending. The first
`--apply-items` items of the second half belong to a run of their own, the filter the bulk
action is applied to. Then measures, each the median of `--repeat`:

1. `bulk.preview` (accept) on the whole dataset; `bulk.apply` (accept) on the run's filter
   and `bulk.undo_batch` of that batch;
2. `team_review.claim_next` for curators taking turns, each passing over the item it holds
   (so every claim searches): one review per item; two reviews per item, for a second
   curator and for "ana" herself (whose next item lies past every item she decided); then,
   after a second decision by "ben" on the first half (one INSERT ... SELECT), for
   curators whose next item lies past the fully reviewed half; `team_progress` on the
   whole dataset;
3. `balance.plan_balance` on the whole dataset.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, literal, select  # noqa: E402

from bench_rows import CHUNK, bench_dataset, insert_rows, link_generations  # noqa: E402
from db.engine import Database, open_database  # noqa: E402
from db.models import (  # noqa: E402
    BulkAction,
    GenerationSource,
    Item,
    ItemStatus,
    QuestionType,
    ReviewAction,
    ReviewEvent,
    utcnow,
)
from db.queries import ItemFilter  # noqa: E402

T = TypeVar("T")
FLAGS = ("length_bias", "duplicate_options", "refusal", "parser_fallback", "blind_answerable")
LETTER_WEIGHTS = (4, 3, 2, 2, 1)  # A is correct most often: balancing has moves to make
FIRST_CURATOR = "ana"
SECOND_CURATOR = "ben"
TEAM = ("cho", "dev", "eli", "fay", "gus")
CLAIM_BUDGET_S = 20.0  # a slow claim scenario stops early (at least MIN_CLAIMS claims)
MIN_CLAIMS = 3

# Bounds the figures are read against.
PREVIEW_BOUND_MS = 1000  # the bulk panel shows the preview after a click
APPLY_BOUND_MS_PER_ITEM = 6.0  # 10,000 items within a minute
UNDO_BOUND_MS_PER_ITEM = 6.0
CLAIM_BOUND_MS = 50  # "next item" is a click: it must feel instant
PROGRESS_BOUND_MS = 1000  # the team panel reads it while open
PLAN_BOUND_S = 5.0  # the Health page shows the plan before balancing


def build(database: Database, count: int, apply_items: int) -> tuple[int, int]:
    """The dataset (reviews_required 1) and the run holding the bulk filter's items."""
    rng = random.Random(count)
    generated_at = utcnow() - timedelta(days=1)
    decided_at = generated_at + timedelta(hours=1)
    image_id, dataset_id, (main_run, bulk_run) = bench_dataset(
        database, run_models=("model-a", "model-b"), run_items=count, requests=count)
    half = count // 2
    later = [ItemStatus.GENERATED, ItemStatus.FAILED, ItemStatus.PENDING]
    event_id = 0
    for start in range(0, count, CHUNK):
        items, generations, events = [], [], []
        for offset in range(start, min(start + CHUNK, count)):
            item_id = offset + 1
            if offset < half:
                status = ItemStatus.ACCEPTED if rng.random() < 0.9 else ItemStatus.REJECTED
            else:
                status = rng.choices(later, (90, 5, 5))[0]
            multiple_choice = offset % 5 != 0
            run_id = bulk_run if half <= offset < half + apply_items else main_run
            items.append({
                "id": item_id, "dataset_id": dataset_id, "position": offset,
                "external_id": f"q{offset}", "question": "What is shown?",
                "question_type": (QuestionType.MULTIPLE_CHOICE if multiple_choice
                                  else QuestionType.FILL_IN_BLANK),
                "image_id": image_id, "image_ref": "bench.jpg", "extra": {}, "status": status,
                "run_id": run_id, "created_at": generated_at, "updated_at": decided_at,
            })
            if status is ItemStatus.PENDING:
                continue
            ok = status is not ItemStatus.FAILED
            options: dict[str, str] = {}
            letter = None
            answer = f"answer {offset}" if ok else None
            distractors: list[str] = []
            if ok and multiple_choice:
                size = rng.choice((3, 4, 5))
                letter = rng.choices("ABCDE"[:size], LETTER_WEIGHTS[:size])[0]
                distractors = [f"option {i} of item {offset}" for i in range(size - 1)]
                others = iter(distractors)
                options = {chr(65 + i): answer if chr(65 + i) == letter else next(others)
                           for i in range(size)}
            flags = {}
            if ok and rng.random() < 0.10:
                flags = {rng.choice(FLAGS): {"reason": "benchmark"}}
            generations.append({
                "id": item_id, "item_id": item_id, "run_id": run_id,
                "source": GenerationSource.MODEL, "ok": ok, "answer": answer,
                "options": options, "correct_letter": letter, "distractors": distractors,
                "quality_flags": flags, "latency_ms": 500.0,
                "error_type": None if ok else "timeout", "created_at": generated_at,
            })
            if status in (ItemStatus.ACCEPTED, ItemStatus.REJECTED):
                event_id += 1
                action = (ReviewAction.ACCEPT if status is ItemStatus.ACCEPTED
                          else ReviewAction.REJECT)
                events.append({"id": event_id, "item_id": item_id, "curator": FIRST_CURATOR,
                               "action": action, "before": {}, "after": {},
                               "created_at": decided_at})
        insert_rows(database, items, generations, events)
    link_generations(database, dataset_id)
    return dataset_id, bulk_run


def second_review(database: Database, dataset_id: int) -> None:
    """A second curator's decision, the same as the first, on every item the first decided."""
    first = (
        select(ReviewEvent.item_id, literal(SECOND_CURATOR), ReviewEvent.action,
               ReviewEvent.before, ReviewEvent.after, ReviewEvent.created_at)
        .join(Item, Item.id == ReviewEvent.item_id)
        .where(Item.dataset_id == dataset_id, ReviewEvent.curator == FIRST_CURATOR)
    )
    with database.write() as session:
        session.execute(insert(ReviewEvent).from_select(
            ["item_id", "curator", "action", "before", "after", "created_at"], first))


def timed(action: Callable[[], T]) -> tuple[float, T]:
    begun = time.perf_counter()
    result = action()
    return time.perf_counter() - begun, result


def verdict(value: float, bound: float) -> str:
    return "within" if value <= bound else "OVER"


def claims(database: Database, item_filter: ItemFilter, curators: tuple[str, ...],
           count: int) -> tuple[list[float], int, int]:
    """Seconds per claim, curators taking turns; claims that found nothing; lowest id handed."""
    from vqa_engine import team_review  # noqa: PLC0415

    held: dict[str, int | None] = {}
    values: list[float] = []
    empty = 0
    lowest = 0
    begun = time.perf_counter()
    for index in range(count):
        curator = curators[index % len(curators)]
        seconds, item_id = timed(lambda: team_review.claim_next(
            database, item_filter, curator=curator, skip=held.get(curator)))
        values.append(seconds)
        held[curator] = item_id
        empty += item_id is None
        if item_id is not None:
            lowest = min(lowest, item_id) if lowest else item_id
        if len(values) >= MIN_CLAIMS and time.perf_counter() - begun > CLAIM_BUDGET_S:
            break
    for curator in curators:
        team_review.release(database, item_filter.dataset_id or 0, curator=curator)
    return values, empty, lowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--apply-items", type=int, default=10_000,
                        help="items in the bulk-apply filter (capped at a quarter of --items)")
    parser.add_argument("--claims", type=int, default=50)
    args = parser.parse_args()
    apply_items = min(args.apply_items, args.items // 4)

    from vqa_engine import balance, bulk, team_review  # noqa: PLC0415

    data = Path(tempfile.mkdtemp(prefix="vqa-curation-bench-"))
    os.environ["VQA_DATA_DIR"] = str(data)
    os.environ.pop("VQA_DATABASE_URL", None)
    os.environ["VQA_EMBEDDED_WORKER"] = "0"
    os.chdir(ROOT)
    database = open_database(f"sqlite:///{data / 'vqa.db'}")
    started = time.perf_counter()
    dataset_id, bulk_run = build(database, args.items, apply_items)
    print(f"built {args.items:,} items in {time.perf_counter() - started:.1f} s; "
          f"median of {args.repeat}\n")
    everything = ItemFilter(dataset_id=dataset_id)

    # 1. bulk actions
    previews = [timed(lambda: bulk.preview(database, everything, BulkAction.ACCEPT))
                for _ in range(args.repeat)]
    ms = statistics.median(s for s, _ in previews) * 1000
    print(f"bulk.preview accept, whole dataset: {ms:.0f} ms "
          f"({previews[0][1].sentence[:60]}...) "
          f"[bound {PREVIEW_BOUND_MS} ms: shown on a click; {verdict(ms, PREVIEW_BOUND_MS)}]")
    run_filter = ItemFilter(dataset_id=dataset_id, run_id=bulk_run)
    applied, undone = [], []
    changed = matching = 0
    for _ in range(args.repeat):
        shown = bulk.preview(database, run_filter, BulkAction.ACCEPT)
        seconds, result = timed(lambda: bulk.apply(database, run_filter, BulkAction.ACCEPT,
                                                   curator="bench", token=shown.token))
        changed, matching = result.changed, shown.matching
        applied.append(seconds)
        batch_id = result.batch_id
        undone.append(timed(lambda: bulk.undo_batch(database, batch_id, curator="bench"))[0])
    apply_s, undo_s = statistics.median(applied), statistics.median(undone)
    per_apply, per_undo = apply_s * 1000 / changed, undo_s * 1000 / changed
    print(f"bulk.apply accept, {changed:,} of {matching:,} items of a run's filter: "
          f"{per_apply:.2f} ms per item, {apply_s:.1f} s in all "
          f"[bound {APPLY_BOUND_MS_PER_ITEM} ms per item; "
          f"{verdict(per_apply, APPLY_BOUND_MS_PER_ITEM)}]")
    print(f"bulk.undo_batch of that batch: {per_undo:.2f} ms per item, {undo_s:.1f} s in all "
          f"[bound {UNDO_BOUND_MS_PER_ITEM} ms per item; "
          f"{verdict(per_undo, UNDO_BOUND_MS_PER_ITEM)}]")

    # 2. team review
    def claim_line(label: str, curators: tuple[str, ...]) -> float:
        values, empty, lowest = claims(database, everything, curators, args.claims)
        median = statistics.median(values) * 1000
        note = f"; {empty} found nothing" if empty else ""
        print(f"claim_next, {label}: {median:.1f} ms per claim (max {max(values) * 1000:.0f} ms, "
              f"{len(values)} claims{note}; items from id {lowest:,}) "
              f"[bound {CLAIM_BOUND_MS} ms: a click must feel instant; "
              f"{verdict(median, CLAIM_BOUND_MS)}]")
        return median

    claim_line(f"1 review per item, {len(TEAM)} curators taking turns", TEAM)
    team_review.set_reviews_required(database, dataset_id, 2)
    claim_line(f"2 reviews per item, half reviewed once, {len(TEAM)} other curators", TEAM)
    claim_line("2 reviews per item, half reviewed once, by the curator who reviewed them",
               (FIRST_CURATOR,))
    second_review(database, dataset_id)
    claim_line(f"2 reviews per item, first half fully reviewed, {len(TEAM)} curators", TEAM)
    progress = [timed(lambda: team_review.team_progress(database, dataset_id))
                for _ in range(args.repeat)]
    ms = statistics.median(s for s, _ in progress) * 1000
    agreement = progress[0][1].agreement
    print(f"team_progress, whole dataset, 2 reviews per item: {ms:.0f} ms "
          f"({agreement.fully_reviewed:,} of {agreement.reviewable:,} fully reviewed) "
          f"[bound {PROGRESS_BOUND_MS} ms; {verdict(ms, PROGRESS_BOUND_MS)}]")

    # 3. balancing
    plans = [timed(lambda: balance.plan_balance(database, dataset_id))
             for _ in range(args.repeat)]
    seconds = statistics.median(s for s, _ in plans)
    plan = plans[0][1]
    print(f"balance.plan_balance, whole dataset: {seconds:.2f} s "
          f"({plan.moving:,} of {plan.total:,} items would move; "
          f"{seconds * 1e6 / max(plan.total, 1):.1f} us per item) "
          f"[bound {PLAN_BOUND_S} s; {verdict(seconds, PLAN_BOUND_S)}]")
    print(f"\nwhole run {time.perf_counter() - started:.0f} s")
    database.close()


if __name__ == "__main__":
    main()
