"""Review-page query time and export speed/memory on a large dataset (prints, never asserts).

    .venv/bin/python benchmarks/review_export_benchmark.py [--items 100000] [--samples 200]

Builds a dataset of `--items` items (bulk Core inserts, a handful of shared images) plus a
10,000-item one in a temporary SQLite database, then measures:
- the queries one rerun of the review page makes (item_detail + a list_items page + count +
  neighbours + status_counts) for random items: median and p95 (goal: median < 150 ms);
- a full JSON export of each dataset in a fresh process: seconds and peak RSS (goal: < 10 s
  for 100,000 items; peak memory must not grow with the dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, update  # noqa: E402

from db.engine import Database, open_database  # noqa: E402
from db.queries import (  # noqa: E402
    ItemFilter,
    count_items,
    item_detail,
    list_items,
    neighbours,
    status_counts,
)
from db.models import (  # noqa: E402
    Dataset,
    Generation,
    GenerationSource,
    Image,
    Item,
    ItemStatus,
    QuestionType,
)

CHUNK = 5_000
IMAGES = 5
STATUS_WEIGHTS = {
    ItemStatus.ACCEPTED: 40,
    ItemStatus.GENERATED: 40,
    ItemStatus.REJECTED: 10,
    ItemStatus.FAILED: 5,
    ItemStatus.PENDING: 5,
}
WORDS = ("cat dog horse bird red blue green large small wooden metal street kitchen table "
         "window person car bicycle tree sky").split()


def _images(database: Database, data: Path) -> list[int]:
    from PIL import Image as PILImage

    ids = []
    with database.write() as session:
        for index in range(IMAGES):
            path = data / "images" / "original" / f"bench{index}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            PILImage.new("RGB", (64, 48), (index * 40, 90, 200)).save(path, format="JPEG")
            image = Image(
                sha256=f"{index:064x}", original_name=f"bench{index}.jpg",
                original_path=str(path.relative_to(data)), prepared_path=str(path.relative_to(data)),
                format="JPEG", width=64, height=48, byte_size=path.stat().st_size,
                prepared_width=64, prepared_height=48, prepared_byte_size=path.stat().st_size,
                prepared_quality=85,
            )
            session.add(image)
            session.flush()
            ids.append(image.id)
    return ids


def build_dataset(database: Database, name: str, count: int, image_ids: list[int],
                  first_id: int) -> int:
    """Bulk-insert `count` items with ids from `first_id`; generation ids equal item ids."""
    rng = random.Random(count)
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    with database.write() as session:
        dataset = Dataset(name=name, default_question_type=QuestionType.MULTIPLE_CHOICE)
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
    for start in range(0, count, CHUNK):
        items, generations = [], []
        for offset in range(start, min(start + CHUNK, count)):
            item_id = first_id + offset
            status = rng.choices(statuses, weights)[0]
            multiple_choice = offset % 5 != 0
            words = rng.sample(WORDS, 6)
            items.append({
                "id": item_id, "dataset_id": dataset_id, "position": offset,
                "external_id": f"{name}-{offset}",
                "question": f"What is the {words[0]} {words[1]} next to the {words[2]}?",
                "question_type": (QuestionType.MULTIPLE_CHOICE if multiple_choice
                                  else QuestionType.FILL_IN_BLANK),
                "image_id": image_ids[offset % len(image_ids)],
                "image_ref": f"bench{offset % len(image_ids)}.jpg",
                "extra": {"source": "benchmark", "row": offset},
                "status": status, "version": 2,
            })
            if status is ItemStatus.PENDING:
                continue
            ok = status is not ItemStatus.FAILED
            answer = " ".join(words[3:5]) if ok else None
            options = {"A": words[5], "B": answer, "C": words[0] + " " + words[2]} if (
                ok and multiple_choice) else {}
            generations.append({
                "id": item_id, "item_id": item_id, "source": GenerationSource.MODEL, "ok": ok,
                "answer": answer, "explanation": "Because it is visible." if ok else None,
                "distractors": [v for k, v in options.items() if k != "B"],
                "options": options, "correct_letter": "B" if options else None,
                "shuffle_seed": offset, "model": "bench-model", "prompt_version": "v1",
                "quality_flags": {"answer_in_question": True} if offset % 97 == 0 else {},
                "error_type": None if ok else "timeout",
            })
        with database.write() as session:
            session.execute(insert(Item), items)
            if generations:
                session.execute(insert(Generation), generations)
    with database.write() as session:
        session.execute(
            update(Item)
            .where(Item.dataset_id == dataset_id, Item.status != ItemStatus.PENDING)
            .values(current_generation_id=Item.id),
            execution_options={"synchronize_session": False},
        )
    return dataset_id


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure_reruns(database: Database, item_filter: ItemFilter, count: int, first_id: int,
                   samples: int, *, cap: int | None = None,
                   first_page: bool = False) -> dict[str, list[float]]:
    """Time the queries of one review-page rerun for `samples` random items."""
    assert item_filter.dataset_id is not None
    dataset_id = item_filter.dataset_id
    rng = random.Random(7)
    timings: dict[str, list[float]] = {name: [] for name in
                                       ("item_detail", "list_items", "count_items",
                                        "neighbours", "status_counts", "rerun",
                                        "rerun_cpu")}

    def timed(name: str, call: Callable[[], object]) -> None:
        started = time.perf_counter()
        call()
        timings[name].append((time.perf_counter() - started) * 1000)

    with database.read() as session:
        matching = count_items(session, item_filter)
    for _ in range(samples):
        item_id = first_id + rng.randrange(count)
        # any page of the filtered table, or the first one (what a new search shows)
        offset = 0 if first_page else rng.randrange(0, max(matching, 1), 50)
        started, started_cpu = time.perf_counter(), time.process_time()
        with database.read() as session:
            timed("item_detail", lambda: item_detail(session, item_id))
            timed("list_items", lambda: list_items(session, item_filter, offset=offset, limit=50))
            timed("count_items", lambda: count_items(session, item_filter, cap=cap))
            timed("neighbours", lambda: neighbours(session, item_filter, item_id))
            timed("status_counts", lambda: status_counts(session, dataset_id))
        timings["rerun"].append((time.perf_counter() - started) * 1000)
        timings["rerun_cpu"].append((time.process_time() - started_cpu) * 1000)
    return timings


def print_timings(title: str, timings: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    print(f"  {'query':<14} {'median ms':>10} {'p95 ms':>10}   (rerun_cpu: process CPU time)")
    for name, values in timings.items():
        print(f"  {name:<14} {statistics.median(values):>10.1f} {_percentile(values, 0.95):>10.1f}")


def export_in_child(url: str, data: Path, dataset_id: int, out: Path, fmt: str) -> dict[str, float]:
    env = dict(os.environ, VQA_DATA_DIR=str(data), VQA_DATABASE_URL=url)
    completed = subprocess.run(
        [sys.executable, __file__, "--export-child", str(dataset_id), str(out), fmt],
        env=env, check=True, capture_output=True, text=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _child(dataset_id: int, out: Path, fmt: str) -> None:
    from vqa_engine.export import ExportFormat, ExportSelection, export_dataset

    database = open_database(upgrade=False)
    startup = resource.getrusage(resource.RUSAGE_SELF)
    baseline, startup_cpu = startup.ru_maxrss, startup.ru_utime + startup.ru_stime
    if dataset_id == 0:
        print(json.dumps({"baseline_rss_mb": baseline / 1024}))
        return
    traced = fmt.endswith("+trace")
    fmt = fmt.removesuffix("+trace")
    if traced:
        tracemalloc.start()
    summary = export_dataset(database, dataset_id, out, fmt=ExportFormat(fmt),
                             selection=ExportSelection.ALL)
    heap_peak = tracemalloc.get_traced_memory()[1] if traced else 0
    tracemalloc.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss
    print(json.dumps({"items": summary.items, "seconds": summary.seconds,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime - startup_cpu,
                      "mb": summary.bytes / 1e6, "baseline_rss_mb": baseline / 1024,
                      "peak_rss_mb": peak / 1024, "heap_peak_mb": heap_peak / 1e6}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    parser.add_argument("--export-child", nargs=3, metavar=("DATASET_ID", "OUT", "FORMAT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        dataset_id, out, fmt = args.export_child
        _child(int(dataset_id), Path(out), fmt)
        return

    data = Path(tempfile.mkdtemp(prefix="vqa-bench-"))
    url = f"sqlite:///{data / 'vqa.db'}"
    os.environ["VQA_DATA_DIR"] = str(data)
    try:
        database = open_database(url)
        started = time.perf_counter()
        image_ids = _images(database, data)
        large = build_dataset(database, "large", args.items, image_ids, first_id=1)
        small = build_dataset(database, "small", args.small, image_ids,
                              first_id=args.items + 1)
        with database.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
        print(f"built {args.items:,} + {args.small:,} items in "
              f"{time.perf_counter() - started:.1f} s ({data / 'vqa.db'}, "
              f"{(data / 'vqa.db').stat().st_size / 1e6:.0f} MB)")

        generated = ItemFilter(dataset_id=large, statuses=(ItemStatus.GENERATED,))
        measure_reruns(database, generated, args.items, 1, 20)  # warm the page cache
        print_timings(f"review page rerun, {args.items:,} items, filter status=generated, "
                      f"random table pages ({args.samples} random items)",
                      measure_reruns(database, generated, args.items, 1, args.samples))
        shapes: list[tuple[str, ItemFilter, int | None, bool]] = [
            ("whole dataset", ItemFilter(dataset_id=large), None, False),
            ("generated + accepted",
             ItemFilter(dataset_id=large, statuses=(ItemStatus.GENERATED, ItemStatus.ACCEPTED)),
             None, False),
            ("fill-in-blank only",
             ItemFilter(dataset_id=large, question_types=(QuestionType.FILL_IN_BLANK,)),
             None, False),
            ("flag answer_in_question (1%)",
             ItemFilter(dataset_id=large, flag="answer_in_question"), None, False),
            ("text 'kitchen', 1st page, count cap 1000",
             ItemFilter(dataset_id=large, text="kitchen"), 1000, True),
            ("text 'kitchen', any page, exact count",
             ItemFilter(dataset_id=large, text="kitchen"), None, False),
        ]
        print(f"\nwhole rerun by filter ({args.samples // 2} random items each)")
        print(f"  {'filter':<42} {'median ms':>10} {'p95 ms':>10} {'CPU median':>11}")
        for label, item_filter, cap, first_page in shapes:
            timings = measure_reruns(database, item_filter, args.items, 1, args.samples // 2,
                                     cap=cap, first_page=first_page)
            rerun = timings["rerun"]
            print(f"  {label:<42} {statistics.median(rerun):>10.1f} "
                  f"{_percentile(rerun, 0.95):>10.1f} "
                  f"{statistics.median(timings['rerun_cpu']):>11.1f}")
        database.close()

        print("\nfull exports (selection=all), each in a fresh process:")
        idle = export_in_child(url, data, 0, data / "none", "json")
        print(f"  process with everything imported, no export: peak RSS "
              f"{idle['baseline_rss_mb']:.1f} MB")
        for label, dataset_id, fmt in (("small", small, "json"), ("large", large, "json"),
                                       ("large", large, "jsonl"), ("small", small, "parquet"),
                                       ("large", large, "parquet")):
            result = export_in_child(url, data, dataset_id, data / f"{label}.{fmt}", fmt)
            print(f"  {fmt:<8} {int(result['items']):>7,} items: {result['seconds']:5.1f} s "
                  f"({result['cpu_seconds']:4.1f} s CPU), "
                  f"{result['mb']:6.1f} MB written, peak RSS {result['peak_rss_mb']:.1f} MB")
        print("\nPython heap peak during a JSON export (tracemalloc; slower, so not timed):")
        for label, dataset_id, size in (("small", small, args.small), ("large", large, args.items)):
            result = export_in_child(url, data, dataset_id, data / f"{label}-traced.json",
                                     "json+trace")
            print(f"  {size:>7,} items: {result['heap_peak_mb']:.2f} MB")
    finally:
        if args.keep:
            print(f"\nkept {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
