"""VLMClient throughput and CPU cost against the simulated endpoint (in its own process).

    .venv/bin/python benchmarks/client_benchmark.py [--latency-ms 100] [--image-kb 200]

For each (requests, concurrency) pair it prints wall time against the ideal bound
`requests x latency / concurrency`, the client's CPU milliseconds per request (this process
only; the simulator runs in a subprocess) and the peak concurrency the simulator saw.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vqa_engine.client import ChatRequest, ClientConfig, RetryPolicy, VLMClient  # noqa: E402
from vqa_engine.settings import Endpoint  # noqa: E402


def model_ready_jpeg(target_kb: int) -> bytes:
    """A noisy photo-like JPEG of roughly `target_kb` kilobytes."""
    side = 256
    while True:
        noise = Image.effect_noise((side, side), 40).convert("RGB")
        tinted = Image.merge("RGB", [band.point(lambda v, k=k: (v + 60 * k) % 256)
                                     for k, band in enumerate(noise.split())])
        buffer = io.BytesIO()
        tinted.save(buffer, "JPEG", quality=85)
        if buffer.tell() >= target_kb * 1024 or side >= 2048:
            return buffer.getvalue()
        side = int(side * 1.25)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_simulator(port: int, latency_ms: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "vqa_engine", "simulate", "--port", str(port),
         "--latency-ms", str(latency_ms)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the simulator did not start")


async def run(base_url: str, image: bytes, requests: int, concurrency: int) -> tuple[float, float]:
    config = ClientConfig(endpoint=Endpoint(base_url=base_url, model="simulated-vlm"),
                          concurrency=concurrency, retry=RetryPolicy(max_retries=0))
    async with VLMClient(config) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(requests):
            queue.put_nowait(index)

        async def worker() -> None:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await client.complete(ChatRequest(f"Question {index}: what colour?", image))

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--image-kb", type=int, default=200)
    parser.add_argument("--runs", default="1000x16,4000x64,10000x256",
                        help="REQUESTSxCONCURRENCY, comma separated")
    args = parser.parse_args()
    image = model_ready_jpeg(args.image_kb)
    port = free_port()
    simulator = start_simulator(port, args.latency_ms)
    base_url = f"http://127.0.0.1:{port}/v1"
    print(f"SIMULATED endpoint, latency {args.latency_ms:g} ms, image {len(image) / 1024:.0f} KB,"
          f" {os.cpu_count()} cores")
    print(f"{'requests':>9} {'conc':>5} {'wall s':>8} {'ideal s':>8} {'vs ideal':>9} "
          f"{'req/s':>8} {'client CPU ms/req':>18}")
    try:
        for spec in args.runs.split(","):
            requests, concurrency = (int(part) for part in spec.split("x"))
            wall, cpu = asyncio.run(run(base_url, image, requests, concurrency))
            ideal = requests * args.latency_ms / 1000 / concurrency
            print(f"{requests:>9} {concurrency:>5} {wall:>8.2f} {ideal:>8.2f} "
                  f"{(wall / ideal - 1) * 100:>+8.1f}% {requests / wall:>8.0f} "
                  f"{cpu * 1000 / requests:>18.2f}")
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)


if __name__ == "__main__":
    main()
