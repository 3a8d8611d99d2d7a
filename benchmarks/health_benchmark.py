"""Time of `dataset_health` on a large dataset (prints, never asserts).

    .venv/bin/python benchmarks/health_benchmark.py [--items 100000] [--samples 5]

Builds a temporary SQLite database with one dataset of `--items` items (bulk Core inserts):
80 % multiple choice with 3 to 5 options and uneven letters, 20 % fill-in-blank; 40 %
accepted, 40 % generated, 10 % rejected, 5 % failed, 5 % pending; 10 % of generations carry
one or two quality flags; two runs with latencies; one decision per decided item, a second
curator on a fifth of them (disagreeing on a fifth of those), an undone decision on every
fiftieth. Then times `dataset_health` (every figure, one read transaction) and its parts,
and whole reruns of the Health page through Streamlit's AppTest (an upper bound of the
script's server time: AppTest parses the page's output too).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_rows import CHUNK, bench_dataset, insert_rows, link_generations  # noqa: E402
from db.engine import Database, open_database  # noqa: E402
from db.models import (  # noqa: E402
    GenerationSource,
    ItemStatus,
    QuestionType,
    ReviewAction,
    utcnow,
)

STATUS_WEIGHTS = {
    ItemStatus.ACCEPTED: 40, ItemStatus.GENERATED: 40, ItemStatus.REJECTED: 10,
    ItemStatus.FAILED: 5, ItemStatus.PENDING: 5,
}
FLAGS = ("length_bias", "duplicate_options", "refusal", "parser_fallback", "blind_answerable")
LETTER_WEIGHTS = (4, 3, 2, 2, 1)  # A is correct most often: the test has something to find


def build(database: Database, count: int) -> int:
    rng = random.Random(count)
    now = utcnow()
    image_id, dataset_id, run_ids = bench_dataset(
        database, run_models=("model-a", "model-b"), run_items=count // 2, requests=count,
        reviews_required=2)
    statuses, weights = list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values())
    event_id = 0
    for start in range(0, count, CHUNK):
        items, generations, events = [], [], []
        for offset in range(start, min(start + CHUNK, count)):
            item_id = offset + 1
            status = rng.choices(statuses, weights)[0]
            multiple_choice = offset % 5 != 0
            items.append({
                "id": item_id, "dataset_id": dataset_id, "position": offset,
                "external_id": f"q{offset}", "question": "What is shown?",
                "question_type": (QuestionType.MULTIPLE_CHOICE if multiple_choice
                                  else QuestionType.FILL_IN_BLANK),
                "image_id": image_id, "image_ref": "bench.jpg", "extra": {}, "status": status,
                "run_id": run_ids[offset % 2],
            })
            if status is ItemStatus.PENDING:
                continue
            ok = status is not ItemStatus.FAILED
            options: dict[str, str] = {}
            letter = None
            if ok and multiple_choice:
                size = rng.choice((3, 4, 5))
                options = {chr(65 + i): f"option {i} of item {offset}" for i in range(size)}
                letter = rng.choices(list(options), LETTER_WEIGHTS[:size])[0]
            flags = {}
            if ok and rng.random() < 0.10:
                flags = {name: {"reason": "benchmark"} for name in rng.sample(FLAGS, rng.choice((1, 2)))}
            generations.append({
                "id": item_id, "item_id": item_id, "run_id": run_ids[offset % 2],
                "source": GenerationSource.MODEL, "ok": ok, "answer": "x" if ok else None,
                "options": options, "correct_letter": letter, "distractors": [],
                "quality_flags": flags, "latency_ms": rng.uniform(200, 900),
                "error_type": None if ok else "timeout", "created_at": now,
            })
            if status in (ItemStatus.ACCEPTED, ItemStatus.REJECTED):
                action = ReviewAction.ACCEPT if status is ItemStatus.ACCEPTED else ReviewAction.REJECT
                curators = ["ana"] if offset % 5 else ["ana", "ben"]
                for curator in curators:
                    event_id += 1
                    differs = curator == "ben" and offset % 25 == 0
                    decided = (ReviewAction.REJECT if action is ReviewAction.ACCEPT
                               else ReviewAction.ACCEPT) if differs else action
                    events.append({"id": event_id, "item_id": item_id, "curator": curator,
                                   "action": decided, "before": {}, "after": {},
                                   "created_at": now,
                                   "undone_by": event_id if offset % 50 == 0 else None})
        insert_rows(database, items, generations, events)
    link_generations(database, dataset_id)
    return dataset_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()

    from vqa_engine import health  # noqa: PLC0415

    data = Path(tempfile.mkdtemp(prefix="vqa-health-bench-"))
    os.environ["VQA_DATA_DIR"] = str(data)
    os.environ.pop("VQA_DATABASE_URL", None)
    os.environ["VQA_EMBEDDED_WORKER"] = "0"
    os.chdir(ROOT)
    database = open_database(f"sqlite:///{data / 'vqa.db'}")
    started = time.perf_counter()
    dataset_id = build(database, args.items)
    print(f"built {args.items:,} items in {time.perf_counter() - started:.1f} s")

    def part(function: Callable[..., object], *extra: object) -> Callable[[], object]:
        def run() -> object:
            with database.read() as session:
                return function(session, dataset_id, *extra)
        return run

    every = (ItemStatus.GENERATED, ItemStatus.ACCEPTED)
    timings = {
        "dataset_health (everything)": lambda: health.dataset_health(database, dataset_id),
        "letters per option count": part(health._letter_tests, every),
        "flag scan (flagged rows only)": part(health._flag_scan, every),
        "per run": part(health._run_stats),
        "per curator": part(health.curator_decisions),
        "agreement": lambda: health.agreement(database, dataset_id),
    }
    def page() -> Callable[[], object]:
        from streamlit.testing.v1 import AppTest  # noqa: PLC0415

        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.query_params["dataset"] = str(dataset_id)
        at.run()
        at.switch_page("pages/6_Health.py").run()
        assert not at.exception, at.exception
        return at.run

    timings["Health page rerun (AppTest)"] = page()
    health.dataset_health(database, dataset_id)  # warm the page cache
    print(f"\n{args.items:,} items, SQLite, {args.samples} samples (ms)\n")
    print("| what | median ms | max ms |")
    print("|---|---:|---:|")
    for name, action in timings.items():
        values = []
        for _ in range(args.samples):
            begun = time.perf_counter()
            action()
            values.append((time.perf_counter() - begun) * 1000)
        print(f"| {name} | {statistics.median(values):.0f} | {max(values):.0f} |")
    report = health.dataset_health(database, dataset_id)
    print(f"\nletters: {[(t.option_count, t.total, round(t.p_value or 0, 6)) for t in report.letters]}")
    print(f"flags: {report.flag_counts}; agreement {report.agreement}")
    database.close()


if __name__ == "__main__":
    main()
