"""`python -m vqa_engine COMMAND`: the batch side of VQA Curator.

Each command is a thin handler over the same engine the dashboard uses. Errors of ours
(`VQAError`) end the process with exit code 1 and their message on stderr; usage errors
exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from vqa_engine.errors import VQAError

if TYPE_CHECKING:
    from vqa_engine.balance import BalanceSummary

Handler = Callable[[argparse.Namespace], int]


def _cmd_migrate(args: argparse.Namespace) -> int:
    from db.engine import database_url, open_database

    database = open_database()
    database.close()
    print(f"schema up to date: {database_url().split('@')[-1]}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from db.engine import open_database
    from vqa_engine.errors import IngestError
    from vqa_engine.ingest import ingest_dataset

    database = open_database()
    bar = tqdm(total=0, desc="preparing images", unit="img", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    try:
        summary = ingest_dataset(
            database, args.questions_file, args.images, args.dataset,
            default_question_type=args.question_type, progress=progress, workers=args.workers,
        )
    except IngestError as exc:
        bar.close()  # the error list must not interleave with the bar
        print(f"error: {len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''} "
              "found; nothing was imported:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        database.close()
    print(
        f"imported dataset '{summary.dataset_name}' (id {summary.dataset_id}): "
        f"{summary.items} items, {summary.images_stored} images stored, "
        f"{summary.duplicates_skipped} duplicates skipped, {summary.seconds:.1f} s"
    )
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


def _cmd_generate(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from vqa_engine.pipeline import PipelineOptions, run_pipeline

    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    options = PipelineOptions(
        input=Path(args.input), out_dir=Path(args.out_dir),
        images=[Path(p) for p in args.images or []], concurrency=args.concurrency,
        batch_size=args.batch_size, base_url=args.base_url, model=args.model,
        api_key_env=args.api_key_env, retries=args.retries, temperature=args.temperature,
        dataset=args.dataset, blind_check=args.blind_check, circular_check=args.circular_check,
    )
    return run_pipeline(options).exit_code


def _cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from db.engine import data_dir, database_url, open_database
    from vqa_engine.host import EngineHost

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    database = open_database()
    print(f"worker running on {database_url().split('@')[-1]}; Ctrl-C drains and exits",
          file=sys.stderr)
    try:
        EngineHost(database, data=data_dir()).run_foreground()
    finally:
        database.close()
    print("worker stopped; unfinished items are back to pending", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from db.engine import open_database
    from db.queries import dataset_by_name, dataset_overview
    from db.models import ItemStatus
    from vqa_engine.balance import balance_letters
    from vqa_engine.errors import ExportError
    from vqa_engine.export import ExportFormat, ExportSelection, ImageMode, export_dataset

    selection = ExportSelection(args.select)
    database = open_database()
    bar = tqdm(total=0, desc="exporting", unit="item", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    try:
        with database.read() as session:
            dataset = dataset_by_name(session, args.dataset)
            if dataset is None:
                names = [entry.name for entry in dataset_overview(session)]
                known = ", ".join(repr(n) for n in names[:20]) or "none yet"
                raise ExportError(f"no dataset named {args.dataset!r}; known datasets: {known}")
        if args.balance_letters:
            balanced = balance_letters(database, dataset.id, curator=args.curator,
                                       seed=args.seed,
                                       statuses=selection.statuses or tuple(ItemStatus))
            print(_balance_report(args.dataset, args.seed, balanced))
        summary = export_dataset(
            database, dataset.id, Path(args.out_path), fmt=ExportFormat(args.format),
            selection=selection, image_mode=ImageMode(args.images),
            progress=progress,
        )
    finally:
        bar.close()
        database.close()
    print(f"exported {summary.items} items of '{args.dataset}' to {summary.path} "
          f"({summary.bytes / 1e6:.1f} MB, {summary.seconds:.1f} s)")
    return 0


def _cmd_balance(args: argparse.Namespace) -> int:
    from db.engine import open_database
    from db.queries import dataset_by_name, dataset_overview
    from vqa_engine.balance import balance_letters
    from vqa_engine.errors import ValidationError

    database = open_database()
    try:
        with database.read() as session:
            dataset = dataset_by_name(session, args.dataset)
            if dataset is None:
                names = [entry.name for entry in dataset_overview(session)]
                known = ", ".join(repr(n) for n in names[:20]) or "none yet"
                raise ValidationError(
                    f"no dataset named {args.dataset!r}; known datasets: {known}"
                )
            dataset_id = dataset.id
        summary = balance_letters(database, dataset_id, curator=args.curator, seed=args.seed)
    finally:
        database.close()
    print(_balance_report(args.dataset, args.seed, summary))
    return 0


def _balance_report(dataset: str, seed: int, summary: BalanceSummary) -> str:
    lines = []
    for count, before in summary.histogram_before.items():
        after = summary.histogram_after.get(count, {})
        lines.append(f"{count} options: before " + " ".join(f"{k}={v}" for k, v in before.items())
                     + " | after " + " ".join(f"{k}={v}" for k, v in after.items()))
    undo = (f"; review batch {summary.batch_id}, undoable from the Export page"
            if summary.batch_id is not None else "")
    lines.append(f"balanced '{dataset}' with seed {seed}: {summary.changed} items re-ordered, "
                 f"{summary.unchanged} unchanged"
                 + (f", {summary.skipped} changed meanwhile and left alone"
                    if summary.skipped else "") + undo)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vqa_engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(handler=_cmd_migrate)

    importer = commands.add_parser(
        "import", help="import a question file and its images as a new dataset",
        description="Import a question file (JSON, JSONL or CSV) and its images as a new "
        "dataset. All or nothing: any bad row or image is reported and nothing is stored.",
    )
    importer.add_argument("questions_file", metavar="QUESTIONS_FILE")
    importer.add_argument("--images", nargs="+", required=True, metavar="PATH",
                          help="image files, folders or zip archives")
    importer.add_argument("--dataset", required=True, metavar="NAME",
                          help="name of the new dataset")
    importer.add_argument("--question-type", choices=["multiple_choice", "fill_in_blank"],
                          help="question type for rows that do not give one")
    importer.add_argument("--workers", type=int, default=None, metavar="N",
                          help="image preparation processes (default: every core)")
    importer.set_defaults(handler=_cmd_import)

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

    generate = commands.add_parser(
        "generate", help="import a question file and generate answers into OUT_DIR",
        description="Import INPUT (JSON, JSONL or CSV) into a database in OUT_DIR, generate "
        "answers and options with an OpenAI-compatible vision model, and write "
        "OUT_DIR/results.json and OUT_DIR/errors.json. Re-running the same command resumes "
        "and pays for nothing already answered.",
    )
    generate.add_argument("input", metavar="INPUT")
    generate.add_argument("out_dir", metavar="OUT_DIR")
    generate.add_argument("--images", nargs="+", metavar="PATH",
                          help="image files, folders or zip archives (default: INPUT's folder)")
    generate.add_argument("--concurrency", type=int, default=10, metavar="N",
                          help="requests in flight at once (1 = sequential; default 10)")
    generate.add_argument("--batch-size", type=int, default=None, metavar="N",
                          help="items claimed per database round trip")
    generate.add_argument("--base-url", help="endpoint base URL (default: $VQA_BASE_URL, "
                          "then a local vLLM at http://localhost:8000/v1)")
    generate.add_argument("--model", help="model name (default: $VQA_MODEL)")
    generate.add_argument("--api-key-env", metavar="VAR",
                          help="environment variable holding the API key (default: VQA_API_KEY)")
    generate.add_argument("--retries", type=int, default=3, metavar="N",
                          help="retries per request for 429 / 5xx / timeouts (default 3)")
    generate.add_argument("--temperature", type=float, default=0.7)
    generate.add_argument("--dataset", metavar="NAME",
                          help="dataset name in OUT_DIR's database (default: INPUT's file name)")
    generate.add_argument("--blind-check", action="store_true",
                          help="ask each finished multiple-choice question again without the "
                               "image and flag it blind_answerable when the model still picks "
                               "the correct letter (1 extra request per item)")
    generate.add_argument("--circular-check", action="store_true",
                          help="ask each finished multiple-choice question once per option "
                               "position, options rotated, and flag it circular_inconsistent "
                               "when the pick moves or differs from the recorded letter "
                               "(one extra request per option)")
    generate.add_argument("-v", "--verbose", action="store_true", help="log the engine's work")
    generate.set_defaults(handler=_cmd_generate)

    worker = commands.add_parser(
        "worker", help="run the generation engine in the foreground (for servers)",
        description="Run queued generation runs of the database ($VQA_DATABASE_URL) until "
        "Ctrl-C or SIGTERM, which lets in-flight requests finish briefly and returns the "
        "rest to pending.",
    )
    worker.set_defaults(handler=_cmd_worker)

    exporter = commands.add_parser(
        "export", help="export a dataset's curated items to a file",
        description="Export the items of a dataset (accepted only by default) to OUT_PATH. "
        "The file appears only when the export is complete.",
    )
    exporter.add_argument("out_path", metavar="OUT_PATH")
    exporter.add_argument("--dataset", required=True, metavar="NAME")
    exporter.add_argument("--format", default="json",
                          choices=["json", "jsonl", "llava", "mmbench", "parquet"],
                          help="json (default, the pipeline's results layout), jsonl, llava "
                          "(conversations), mmbench (TSV with A/B/C/D columns and base64 "
                          "images), parquet (with image bytes)")
    exporter.add_argument("--select", default="accepted",
                          choices=["accepted", "accepted+generated", "all"],
                          help="which items (default: accepted)")
    exporter.add_argument("--images", default="names", choices=["names", "zip", "embedded"],
                          help="names: the image file names (default); zip: OUT_PATH is a zip "
                          "with the export and an images/ folder; embedded: data: URLs")
    exporter.add_argument("--balance-letters", action="store_true",
                          help="first re-order options so correct letters are spread evenly "
                          "over the selected items (recorded as one review batch, undoable "
                          "from the Review or Export page)")
    exporter.add_argument("--seed", type=int, default=0,
                          help="plan seed for --balance-letters (default 0)")
    exporter.add_argument("--curator", default="cli", metavar="NAME",
                          help="name recorded for --balance-letters (default: cli)")
    exporter.set_defaults(handler=_cmd_export)

    balancer = commands.add_parser(
        "balance", help="re-order options so correct letters are spread evenly",
        description="Re-order the options of generated and accepted multiple-choice items so "
        "that, per option count, every letter is correct within one time of the others. "
        "Texts never change; each re-ordered item gets a review event.",
    )
    balancer.add_argument("--dataset", required=True, metavar="NAME")
    balancer.add_argument("--seed", type=int, default=0, help="plan seed (default 0)")
    balancer.add_argument("--curator", default="cli", metavar="NAME",
                          help="name recorded on the review events (default: cli)")
    balancer.set_defaults(handler=_cmd_balance)
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
