"""Server time of whole dashboard reruns on a large dataset (prints, never asserts).

    .venv/bin/python benchmarks/dashboard_benchmark.py [--items 100000] [--samples 60]

Builds a dataset of `--items` items (the bulk builder of `review_export_benchmark.py`) in a
temporary SQLite database, then runs the real page scripts through Streamlit's AppTest
(the same script runner the server uses, without a browser or network) and times:
- Review: a rerun of the card of a random item, "Next", and "Accept" (goal: median under
  150 ms per rerun);
- Review table view: a random page of the 50-row table;
- Home, Runs and Export: one rerun each (their aggregates read the whole dataset's counts).
AppTest adds its own small cost (parsing the page's output); the figures are an upper bound
of the script's server time.
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def _row(name: str, values: list[float]) -> str:
    return (f"| {name} | {len(values)} | {statistics.median(values):.0f} | "
            f"{_percentile(values, 0.95):.0f} | {max(values):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=60)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="vqa-dashboard-bench-"))
    os.environ["VQA_DATA_DIR"] = str(data)
    os.environ.pop("VQA_DATABASE_URL", None)
    os.environ["VQA_EMBEDDED_WORKER"] = "0"  # nothing to generate; measure the pages alone
    os.chdir(ROOT)

    from review_export_benchmark import _images, build_dataset  # noqa: PLC0415
    from streamlit.testing.v1 import AppTest  # noqa: PLC0415

    from db.engine import open_database  # noqa: PLC0415

    database = open_database(f"sqlite:///{data / 'vqa.db'}")
    started = time.perf_counter()
    image_ids = _images(database, data)
    dataset_id = build_dataset(database, "bench", args.items, image_ids, first_id=1)
    print(f"built {args.items:,} items in {time.perf_counter() - started:.1f} s")
    database.close()

    rng = random.Random(11)
    results: dict[str, list[float]] = {}

    def timed(name: str, action: Callable[[], object]) -> None:
        begun = time.perf_counter()
        action()
        results.setdefault(name, []).append((time.perf_counter() - begun) * 1000)

    def page(path: str | None, **params: str) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.query_params.update(params)
        at.run()
        if path:
            at.switch_page(path).run()
        assert not at.exception, at.exception
        return at

    # Warm-up: opens the database (schema check) once, like the first request after start.
    page("pages/3_Review.py", dataset=str(dataset_id), curator="bench")

    for _ in range(args.samples):
        item = 1 + rng.randrange(args.items)
        at = page("pages/3_Review.py", dataset=str(dataset_id), curator="bench", item=str(item))
        timed("review: rerun of a card", at.run)
        timed("review: Next", lambda: at.button(key="review_next").click().run())
        accept = at.button(key="review_accept")
        if not accept.disabled:
            timed("review: Accept (writes, moves on)", lambda: accept.click().run())
        assert not at.exception, at.exception

    at = page("pages/3_Review.py", dataset=str(dataset_id), curator="bench")
    at.segmented_control(key="review_view").set_value("Table").run()
    for _ in range(max(10, args.samples // 3)):
        number = 1 + rng.randrange(max(1, args.items * 4 // 10 // 50))
        at.session_state["review_table_page"] = number
        timed("review table: a page of 50 rows", at.run)

    at = page("pages/3_Review.py", dataset=str(dataset_id), curator="bench")
    at.text_input(key="review_text").set_value("wooden").run()
    for _ in range(10):
        timed("review: text search 'wooden'", at.run)

    for path, label in ((None, "home"), ("pages/2_Runs.py", "runs"), ("pages/4_Export.py", "export")):
        at = page(path, dataset=str(dataset_id))
        for _ in range(10):
            timed(f"{label}: rerun", at.run)

    print(f"\n{args.items:,} items, SQLite, AppTest reruns (ms)\n")
    print("| rerun | samples | median ms | p95 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in results.items():
        print(_row(name, values))


if __name__ == "__main__":
    main()
