"""`python -m vqa_engine COMMAND`: the batch side of VQA Curator.

Each command is a thin handler over the same engine the dashboard uses. Errors of ours
(`VQAError`) end the process with exit code 1 and their message on stderr; usage errors
exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from vqa_engine.errors import VQAError

Handler = Callable[[argparse.Namespace], int]


def _cmd_migrate(args: argparse.Namespace) -> int:
    from db.engine import database_url, open_database

    database = open_database()
    database.close()
    print(f"schema up to date: {database_url().split('@')[-1]}")
    return 0


def _faults_argument(text: str) -> dict[str, float]:
    from vqa_engine.simulator import parse_faults

    try:
        return parse_faults(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_simulate(args: argparse.Namespace) -> int:
    import asyncio

    from vqa_engine.simulator import SimulatorConfig, start_simulator

    config = SimulatorConfig(latency_ms=args.latency_ms, jitter_ms=args.jitter_ms,
                             faults=args.faults, seed=args.seed, model=args.model)

    async def serve() -> None:
        simulator = await start_simulator(config, args.port, host=args.host)
        try:
            faults = ", ".join(f"{name}={rate:g}" for name, rate in config.faults.items())
            print(f"SIMULATED endpoint (no real model) at {simulator.base_url}  "
                  f"model {config.model}, latency {config.latency_ms:g} "
                  f"+- {config.jitter_ms:g} ms, faults: {faults or 'none'}", flush=True)
            print("press Ctrl-C to stop", flush=True)
            await asyncio.Event().wait()
        finally:
            await simulator.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        print("simulator stopped", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vqa_engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(handler=_cmd_migrate)
    simulate = commands.add_parser(
        "simulate", help="serve a SIMULATED OpenAI-compatible vision endpoint (no real model)",
        description="Serve a simulated OpenAI-compatible endpoint (POST /v1/chat/completions, "
        "GET /v1/models) with configurable latency and injected faults, for tests, "
        "benchmarks and offline demos. Its answers are made up.",
    )
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8000)
    simulate.add_argument("--latency-ms", type=float, default=100.0, metavar="MS")
    simulate.add_argument("--jitter-ms", type=float, default=0.0, metavar="MS")
    simulate.add_argument("--faults", type=_faults_argument, default={}, metavar="SPEC",
                          help="e.g. 429=0.1,500=0.05,reset=0.01,stall=0.01,garbage=0.01,"
                          "empty=0.01,length=0.01 (also 400,401,403,404,413,502,503,html)")
    simulate.add_argument("--seed", type=int, default=None)
    simulate.add_argument("--model", default="simulated-vlm", metavar="NAME")
    simulate.set_defaults(handler=_cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except VQAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
