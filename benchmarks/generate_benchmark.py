"""Generation runs end to end against the simulated endpoint, and a naive baseline.

    .venv/bin/python benchmarks/generate_benchmark.py [--quick] [--latency-ms 100]

Every scenario generates multiple-choice items (two requests each) in a fresh process
with a fresh SQLite database, so its CPU time and peak RSS are its own. The simulator runs
in yet another process. Printed per scenario: wall time against the ideal bound
`requests x latency / concurrency`, the generating process's CPU milliseconds per request
(every thread: event loop, database writer, file reads), and its peak RSS.

`--repeat N` runs every scenario N times and reports the median (wall time), for machines
shared with other work. The engine is what `generate` and the dashboard run (EngineHost -> worker -> writer). The
naive baseline is the usual first script: `asyncio.gather` over every item, one
semaphore, each image re-encoded with Pillow for every call, results kept in memory and
written at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import io
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMAGES = 50
IMAGE_SIDE = 256


# ---------------------------------------------------------------- shared set-up


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_simulator(port: int, latency_ms: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "vqa_engine", "simulate", "--port", str(port),
         "--latency-ms", str(latency_ms)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the simulator did not start")


def photo_jpeg(seed: int) -> bytes:
    from PIL import Image

    noise = Image.effect_noise((IMAGE_SIDE, IMAGE_SIDE), 30 + seed % 20).convert("RGB")
    tinted = Image.merge("RGB", [band.point(lambda v, k=k: (v + 40 * k + seed * 7) % 256)
                                 for k, band in enumerate(noise.split())])
    buffer = io.BytesIO()
    tinted.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def seed_database(workdir: Path, items: int) -> tuple[Any, int, list[tuple[int, str, str]]]:
    """A database with `items` multiple-choice items over IMAGES images (Core inserts)."""
    from sqlalchemy import insert, select

    from db.engine import open_database
    from db.models import Dataset, Image, Item, ItemStatus, QuestionType
    from vqa_engine.images import image_paths_for

    database = open_database(f"sqlite:///{workdir / 'vqa.db'}")
    with database.write() as session:
        dataset = Dataset(name="benchmark", source_name="benchmark.json")
        session.add(dataset)
        session.flush()
        image_rows = []
        for index in range(IMAGES):
            jpeg = photo_jpeg(index)
            sha = hashlib.sha256(jpeg).hexdigest()
            original, prepared = image_paths_for(sha, "jpg")
            for relative in (original, prepared):
                path = workdir / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpeg)
            image_rows.append(dict(
                sha256=sha, original_name=f"photo{index}.jpg", original_path=original,
                prepared_path=prepared, format="JPEG", width=IMAGE_SIDE, height=IMAGE_SIDE,
                byte_size=len(jpeg), prepared_width=IMAGE_SIDE, prepared_height=IMAGE_SIDE,
                prepared_byte_size=len(jpeg), prepared_quality=85))
        session.execute(insert(Image), image_rows)
        images = list(session.execute(select(Image.id, Image.prepared_path).order_by(Image.id)))
        rows = [dict(dataset_id=dataset.id, position=index, external_id=f"q{index}",
                     question=f"What colour dominates photo number {index}?",
                     question_type=QuestionType.MULTIPLE_CHOICE,
                     image_id=images[index % IMAGES][0],
                     image_ref=f"photo{index % IMAGES}.jpg", extra={"n": index},
                     status=ItemStatus.PENDING)
                for index in range(items)]
        for start in range(0, len(rows), 5000):
            session.execute(insert(Item), rows[start : start + 5000])
        dataset_id = dataset.id
    jobs = [(index, f"What colour dominates photo number {index}?",
             str(workdir / images[index % IMAGES][1])) for index in range(items)]
    return database, dataset_id, jobs


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 / 1024


# ---------------------------------------------------------------- children


def child_engine(base_url: str, items: int, concurrency: int, batch_size: int) -> dict[str, Any]:
    from sqlalchemy import select

    from db.models import Run, RunStatus
    from vqa_engine.host import EngineHost
    from vqa_engine.runs import RunSettings, as_utc, start_run
    from vqa_engine.settings import Endpoint
    from vqa_engine.worker import WorkerSettings

    workdir = Path(tempfile.mkdtemp(prefix="vqa-bench-"))
    database, dataset_id, jobs = seed_database(workdir, items)
    del jobs
    endpoint = Endpoint(base_url=base_url, model="simulated-vlm")
    settings = RunSettings(concurrency=concurrency, batch_size=batch_size)
    run_id = start_run(database, dataset_id, endpoint, settings)
    gc.collect()
    rss_before = current_rss_mb()
    host = EngineHost(database, data=workdir, settings=WorkerSettings(exclusive=True),
                      run_ids={run_id})
    cpu_start, wall_start = time.process_time(), time.time()
    host.start()
    while True:
        with database.read() as session:
            status = session.scalar(select(Run.status).where(Run.id == run_id))
        if status is not None and status.is_finished:
            break
        time.sleep(0.1)
    cpu = time.process_time() - cpu_start
    host.stop()
    with database.read() as session:
        run = session.get(Run, run_id)
        assert run is not None
        finished = as_utc(run.finished_at)
        assert finished is not None
        finished_ts = finished.timestamp()
        result = dict(status=run.status.value, generated=run.generated_items,
                      failed=run.failed_items, requests=run.requests, retries=run.retries)
    assert status is RunStatus.COMPLETED, result
    database.close()
    result.update(wall=finished_ts - wall_start, cpu=cpu, rss_before=rss_before,
                  rss_peak=peak_rss_mb())
    return result


def child_naive(base_url: str, items: int, concurrency: int) -> dict[str, Any]:
    import aiohttp
    from PIL import Image

    from vqa_engine.parsing import parse_answer, parse_distractors
    from vqa_engine.prompts import answer_prompt, distractor_prompt
    from db.models import QuestionType

    workdir = Path(tempfile.mkdtemp(prefix="vqa-naive-"))
    database, _dataset_id, jobs = seed_database(workdir, items)
    database.close()
    gc.collect()
    rss_before = current_rss_mb()
    url = base_url + "/chat/completions"
    counted = {"requests": 0}

    async def main() -> list[dict[str, Any]]:
        semaphore = asyncio.Semaphore(concurrency)
        results: list[dict[str, Any]] = []
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def call(prompt: str, path: str) -> str:
                with Image.open(path) as picture:
                    buffer = io.BytesIO()
                    picture.convert("RGB").save(buffer, "JPEG", quality=85)
                data = base64.b64encode(buffer.getvalue()).decode()
                body = {"model": "simulated-vlm", "temperature": 0.7, "max_tokens": 1024,
                        "messages": [{"role": "user", "content": [
                            {"type": "image_url",
                             "image_url": {"url": f"data:image/jpeg;base64,{data}"}},
                            {"type": "text", "text": prompt}]}]}
                async with session.post(url, json=body) as response:
                    payload = await response.json()
                counted["requests"] += 1
                return str(payload["choices"][0]["message"]["content"])

            async def one(job: tuple[int, str, str]) -> None:
                index, question, path = job
                async with semaphore:
                    answer = parse_answer(await call(
                        answer_prompt(question, QuestionType.MULTIPLE_CHOICE), path)).answer
                    options = parse_distractors(await call(
                        distractor_prompt(question, answer, 3), path)).options
                results.append({"id": index, "answer": answer, "options": options})

            await asyncio.gather(*(one(job) for job in jobs))
        return results

    cpu_start, wall_start = time.process_time(), time.time()
    results = asyncio.run(main())
    (workdir / "results.json").write_text(json.dumps(results))
    wall, cpu = time.time() - wall_start, time.process_time() - cpu_start
    return dict(status="completed", generated=len(results), failed=items - len(results),
                requests=counted["requests"], retries=0, wall=wall, cpu=cpu,
                rss_before=rss_before, rss_peak=peak_rss_mb())


# ---------------------------------------------------------------- parent


@dataclass(frozen=True)
class Scenario:
    kind: str  # engine | naive
    items: int
    concurrency: int

    @property
    def requests(self) -> int:
        return self.items * 2


def run_child(scenario: Scenario, base_url: str, batch_size: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", scenario.kind, "--base-url", base_url,
               "--items", str(scenario.items), "--concurrency", str(scenario.concurrency),
               "--batch-size", str(batch_size)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{scenario} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each scenario N times and report the median (noisy machines)")
    parser.add_argument("--child", choices=["engine", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "engine":
            result = child_engine(args.base_url, args.items, args.concurrency, args.batch_size)
        else:
            result = child_naive(args.base_url, args.items, args.concurrency)
        print(json.dumps(result))
        return

    if args.quick:
        timing = [(200, 16), (1000, 64)]
        memory = (200, 2000, 64)
    else:
        timing = [(2000, 64), (10000, 256)]
        memory = (2000, 20000, 256)
    scenarios: list[Scenario] = []
    for items, concurrency in timing:
        scenarios.append(Scenario("engine", items, concurrency))
        if not args.no_naive:
            scenarios.append(Scenario("naive", items, concurrency))
    small, large, memory_concurrency = memory
    for items in (small, large):
        scenario = Scenario("engine", items, memory_concurrency)
        if scenario not in scenarios:
            scenarios.append(scenario)

    port = free_port()
    simulator = start_simulator(port, args.latency_ms)
    base_url = f"http://127.0.0.1:{port}/v1"
    results: dict[Scenario, dict[str, Any]] = {}
    try:
        for scenario in scenarios:
            runs = [run_child(scenario, base_url, args.batch_size) for _ in range(args.repeat)]
            runs.sort(key=lambda result: result["wall"])
            results[scenario] = runs[len(runs) // 2]  # the median by wall time
            print(f"  done: {scenario.kind} {scenario.items} items @ {scenario.concurrency}: "
                  + ", ".join(f"{r['wall']:.2f} s" for r in runs), file=sys.stderr, flush=True)
    finally:
        simulator.terminate()
        simulator.wait(10)

    latency = args.latency_ms / 1000.0
    print(f"\nGeneration against the simulated endpoint: {args.latency_ms:g} ms latency, "
          f"multiple-choice items (2 requests each), {IMAGES} distinct {IMAGE_SIDE}x{IMAGE_SIDE} "
          f"JPEGs, batch size {args.batch_size}, {os.cpu_count()} CPU(s), median of "
          f"{args.repeat}, load average {os.getloadavg()[0]:.1f} at the end\n")
    header = (f"{'run':<7}{'items':>7}{'requests':>10}{'conc.':>7}{'wall s':>9}{'ideal s':>9}"
              f"{'wall/ideal':>12}{'CPU ms/req':>12}{'RSS start MB':>14}{'RSS peak MB':>13}")
    print(header)
    print("-" * len(header))
    for scenario, result in results.items():
        ideal = scenario.requests * latency / scenario.concurrency
        print(f"{scenario.kind:<7}{scenario.items:>7}{result['requests']:>10}"
              f"{scenario.concurrency:>7}{result['wall']:>9.2f}{ideal:>9.2f}"
              f"{result['wall'] / ideal:>12.3f}{result['cpu'] * 1000 / result['requests']:>12.2f}"
              f"{result['rss_before']:>14.1f}{result['rss_peak']:>13.1f}")
    print()
    for items, concurrency in timing:
        engine = results[Scenario("engine", items, concurrency)]
        naive = results.get(Scenario("naive", items, concurrency))
        if naive:
            print(f"naive / engine at {items} items, concurrency {concurrency}: wall "
                  f"{naive['wall'] / engine['wall']:.2f}x, CPU per request "
                  f"{naive['cpu'] / engine['cpu']:.2f}x, peak RSS "
                  f"{naive['rss_peak'] / engine['rss_peak']:.2f}x")
    growth = (results[Scenario("engine", large, memory_concurrency)]["rss_peak"]
              - results[Scenario("engine", small, memory_concurrency)]["rss_peak"])
    print(f"engine peak RSS growth from {small} to {large} items (concurrency "
          f"{memory_concurrency}): {growth:+.1f} MB")


if __name__ == "__main__":
    main()
