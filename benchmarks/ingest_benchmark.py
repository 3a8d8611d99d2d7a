"""Ingest throughput and memory: the process pool against a one-process baseline.

Generates N images of mixed sizes (0.3 to 24 megapixels, log-uniform, so most are a few
megapixels and some are very large; mostly JPEG, small ones also PNG) once into a cache dir,
then ingests them into fresh temporary data dirs:

- sequentially in one process (`workers=1`, no pool): the baseline;
- with the process pool over every core;
- with the pool on the first quarter of the images, to show that peak memory does not
  grow with the number of images.

Each measurement runs in its own subprocess so its peak RSS (the process plus all its
children, sampled every 20 ms) is not inflated by an earlier one. Prints, never asserts.

    .venv/bin/python benchmarks/ingest_benchmark.py [--images 1000] [--workers N] [--repeat R]

The machine's other load distorts wall-clock figures; the CPU time per image (summed over
the process tree) does not, and alternating repeated runs shows how much the load moved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "vqa-ingest-benchmark-images"
MIN_MP, MAX_MP = 0.3, 24.0
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)


def _image_spec(index: int) -> tuple[str, int, int]:
    rng = random.Random(index)
    megapixels = math.exp(rng.uniform(math.log(MIN_MP), math.log(MAX_MP)))
    aspect = rng.choice(ASPECTS)
    width = max(16, round(math.sqrt(megapixels * 1e6 * aspect)))
    height = max(16, round(width / aspect))
    kind = "png" if megapixels < 2.0 and rng.random() < 0.3 else "jpg"
    return f"img_{index:05d}_{width}x{height}.{kind}", width, height


def _make_image(target: str, index: int, width: int, height: int) -> int:
    from PIL import Image

    rng = random.Random(index)
    tile = Image.frombytes("RGB", (48, 36), rng.randbytes(48 * 36 * 3))
    image = tile.resize((width, height), Image.Resampling.BICUBIC)
    path = Path(target)
    temporary = path.with_suffix(path.suffix + ".tmp")
    if path.suffix == ".png":
        image.save(temporary, format="PNG", compress_level=1)
    else:
        image.save(temporary, format="JPEG", quality=90)
    temporary.rename(path)
    return path.stat().st_size


def ensure_images(cache: Path, count: int) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    specs = [_image_spec(i) for i in range(count)]
    paths = [cache / name for name, _, _ in specs]
    missing = [(i, spec) for i, spec in enumerate(specs) if not paths[i].exists()]
    if missing:
        print(f"generating {len(missing)} images into {cache} (once) ...", flush=True)
        started = time.perf_counter()
        with ProcessPoolExecutor() as pool:
            list(pool.map(
                _make_image,
                [str(cache / name) for _, (name, _, _) in missing],
                [i for i, _ in missing],
                [w for _, (_, w, _) in missing],
                [h for _, (_, _, h) in missing],
                chunksize=4,
            ))
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return paths


def write_questions(cache: Path, paths: list[Path]) -> Path:
    target = cache / f"questions_{len(paths)}.jsonl"
    with open(target, "w", encoding="utf-8") as stream:
        for i, path in enumerate(paths):
            stream.write(json.dumps({
                "id": f"b{i:05d}", "question": "What is in this picture?",
                "question_type": "fill_in_blank" if i % 2 else "multiple_choice",
                "image": path.name,
            }) + "\n")
    return target


class ProcessTreeMonitor:
    """Samples this process and all its descendants in a background thread: the peak of
    their summed RSS, and the CPU time each one used (a figure other load cannot inflate)."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self.peak_rss = 0
        self._cpu: dict[int, float] = {}
        self._cpu_start = sum(self._process.cpu_times()[:2])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values()) - self._cpu_start

    def _sample(self) -> None:
        total = 0
        for process in [self._process, *self._process.children(recursive=True)]:
            try:
                with process.oneshot():
                    total += process.memory_info().rss
                    times = process.cpu_times()
                    self._cpu[process.pid] = times.user + times.system
            except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                pass
        self.peak_rss = max(self.peak_rss, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> ProcessTreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def measure(cache: Path, count: int, workers: int) -> dict[str, float]:
    """One ingest into a fresh data dir (runs inside the measuring subprocess)."""
    from db.engine import open_database
    from vqa_engine.ingest import ingest_dataset

    paths = ensure_images(cache, count)
    questions = write_questions(cache, paths)
    data = Path(tempfile.mkdtemp(prefix="vqa-bench-data-"))
    try:
        database = open_database(f"sqlite:///{data / 'vqa.db'}")
        with ProcessTreeMonitor() as monitor:
            started = time.perf_counter()
            summary = ingest_dataset(
                database, questions, [cache], "benchmark", data=data, workers=workers,
            )
            seconds = time.perf_counter() - started
        database.close()
        stored = sum(f.stat().st_size for f in (data / "images").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return {
        "images": summary.images_stored,
        "seconds": seconds,
        "images_per_s": summary.images_stored / seconds,
        "peak_rss_mb": monitor.peak_rss / 2**20,
        "cpu_s_per_image": monitor.cpu_seconds / max(1, summary.images_stored),
        "stored_mb": stored / 2**20,
    }


def _run_measurement(cache: Path, count: int, workers: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--measure", "--images", str(count),
         "--workers", str(workers), "--cache", str(cache)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each of sequential and pool, alternating")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.cache, args.images, args.workers)))
        return

    paths = ensure_images(args.cache, args.images)
    sizes = [p.stat().st_size for p in paths]
    megapixels = [int(p.stem.split("_")[-1].split("x")[0]) * int(p.stem.split("x")[-1]) / 1e6
                  for p in paths]
    for path in paths:  # warm the page cache so no run pays for cold reads
        path.read_bytes()
    quarter = max(1, args.images // 4)
    print(f"images: {len(paths)}, {sum(sizes) / 2**20:.0f} MB on disk, "
          f"{min(megapixels):.1f}-{max(megapixels):.1f} MP "
          f"(median {sorted(megapixels)[len(megapixels) // 2]:.1f} MP, "
          f"mean {sum(megapixels) / len(megapixels):.1f} MP)")
    print(f"cores: {os.cpu_count()}, pool workers: {args.workers}, "
          f"load average before: {os.getloadavg()[0]:.2f}")

    runs: dict[str, list[dict[str, float]]] = {"sequential": [], "pool": []}
    for round_ in range(args.repeat):  # alternate, so a burst of outside load hits both
        order = ["sequential", "pool"] if round_ % 2 == 0 else ["pool", "sequential"]
        for kind in order:
            workers = 1 if kind == "sequential" else args.workers
            runs[kind].append(_run_measurement(args.cache, args.images, workers))
    pooled_quarter = _run_measurement(args.cache, quarter, args.workers)

    def line(label: str, result: dict[str, float]) -> str:
        # Cores busy = CPU time of the whole process tree / wall time: below the worker
        # count, the pool waited for cores that other load was using.
        busy = result["cpu_s_per_image"] * result["images"] / result["seconds"]
        return (
            f"{label:<30} {result['images']:>5.0f} images {result['seconds']:>6.1f} s "
            f"{result['images_per_s']:>6.2f} images/s  peak RSS {result['peak_rss_mb']:>4.0f} MB"
            f"  CPU {result['cpu_s_per_image'] * 1000:>3.0f} ms/image  cores busy {busy:.2f}"
        )

    for kind, results in runs.items():
        for i, result in enumerate(results, start=1):
            label = "sequential (1 process)" if kind == "sequential" else "pool"
            if kind == "pool":
                label += f" ({args.workers} workers)"
            print(line(f"{label} run {i}", result))
    print(line(f"pool, first {quarter} images", pooled_quarter))
    best = {kind: max(results, key=lambda r: r["images_per_s"]) for kind, results in runs.items()}
    print(f"speed-up pool / sequential (best runs): "
          f"{best['pool']['images_per_s'] / best['sequential']['images_per_s']:.2f}x")
    print(f"peak RSS with the pool, {quarter} vs {args.images} images: "
          f"{pooled_quarter['peak_rss_mb']:.0f} MB vs "
          f"{max(r['peak_rss_mb'] for r in runs['pool']):.0f} MB")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
