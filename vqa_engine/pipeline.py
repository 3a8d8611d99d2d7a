"""`python -m vqa_engine generate`: the original command-line pipeline, on the engine.

INPUT is imported into a database kept in OUT_DIR (once: a re-run finds the dataset by
name and goes on), a run is started or resumed, the same worker the dashboard uses
generates in the foreground with a progress bar, and OUT_DIR receives `results.json` (one
`records.item_record` per generated item) and `errors.json` (each failed item with its
input fields, error type, step and message).

Killing the process loses nothing paid for: the request ledger lives in OUT_DIR/vqa.db, so
running the same command again resumes where it stopped and sends only requests that
never got an answer. The process owns that database alone, so items it left
`generating` are reclaimed at once.

Exit status: 0 when the run completed (some items may have failed; the summary says so),
1 with one line on stderr when the run as a whole failed (e.g. the key was refused).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Text, cast, func, select

from db.engine import Database, open_database
from db.models import Dataset, Generation, Item, ItemStatus, RunStatus
from vqa_engine.client import RetryPolicy
from vqa_engine.errors import ConfigError
from vqa_engine.generator import GenerationSettings
from vqa_engine.model_checks import CHECK_FLAGS, ModelChecks
from vqa_engine.records import item_record
from vqa_engine.runs import (
    ItemSelection,
    RunProgress,
    RunSettings,
    cancel_run,
    find_open_run,
    reclaim_stale_items,
    resume_run,
    run_config,
    run_progress,
    start_run,
)
from vqa_engine.settings import Endpoint, is_placeholder_key, resolve_endpoint

RESULTS_FILE = "results.json"
ERRORS_FILE = "errors.json"
DATABASE_FILE = "vqa.db"
PAGE = 500
OUTPUT_STATUSES = (ItemStatus.GENERATED, ItemStatus.ACCEPTED)


@dataclass(frozen=True)
class PipelineOptions:
    input: Path
    out_dir: Path
    images: Sequence[Path] = ()
    concurrency: int = 10
    batch_size: int | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    retries: int = 3
    temperature: float = 0.7
    dataset: str | None = None
    blind_check: bool = False
    circular_check: bool = False
    poll_interval: float = 0.25
    show_progress: bool | None = None  # None: only on a terminal


@dataclass
class PipelineResult:
    exit_code: int
    run_id: int | None = None
    generated: int = 0
    failed: int = 0
    results_path: Path | None = None
    errors_path: Path | None = None
    message: str | None = None
    progress: RunProgress | None = field(default=None, repr=False)


def endpoint_for(options: PipelineOptions) -> Endpoint:
    endpoint = resolve_endpoint(options.base_url, options.model, api_key_env=options.api_key_env)
    if options.api_key_env and is_placeholder_key(os.environ.get(options.api_key_env)):
        raise ConfigError(
            f"--api-key-env {options.api_key_env}: that environment variable is not set (or "
            f"holds a placeholder); export {options.api_key_env}=<your key> and run again"
        )
    return endpoint


def settings_for(options: PipelineOptions) -> RunSettings:
    batch = options.batch_size or max(8, min(256, options.concurrency * 2))
    return RunSettings(
        concurrency=options.concurrency,
        batch_size=batch,
        generation=GenerationSettings(temperature=options.temperature),
        retry=RetryPolicy(max_retries=options.retries),
        model_checks=ModelChecks(blind=options.blind_check, circular=options.circular_check),
    )


def _dataset_id(database: Database, options: PipelineOptions, name: str,
                out: TextIO) -> int:
    with database.read() as session:
        found = session.scalar(select(Dataset.id).where(Dataset.name == name))
    if found is not None:
        print(f"dataset '{name}' was imported before; resuming it", file=out)
        return int(found)
    from vqa_engine.ingest import ingest_dataset

    images = list(options.images) or [options.input.parent]
    summary = ingest_dataset(database, options.input, images, name, data=options.out_dir)
    print(f"imported {summary.items} items ({summary.images_stored} images) as dataset "
          f"'{name}'", file=out)
    return summary.dataset_id


def _prepare_run(database: Database, dataset_id: int, endpoint: Endpoint,
                 settings: RunSettings, out: TextIO) -> int | None:
    """The run to execute: the unfinished one if it has the same settings, else a new one."""
    wanted = run_config(endpoint, settings, ItemSelection.INCOMPLETE)
    open_run = find_open_run(database, dataset_id)
    if open_run is not None:
        same = all(open_run.config.get(k) == wanted.get(k)
                   for k in ("endpoint", "key_origin", "settings"))
        if same:
            if open_run.status is RunStatus.PAUSED:
                resume_run(database, open_run.id)
            print(f"resuming run {open_run.id}", file=out)
            return open_run.id
        cancel_run(database, open_run.id)
        print(f"run {open_run.id} had other settings; starting a new run", file=out)
    with database.read() as session:
        remaining = session.scalar(
            select(func.count()).select_from(Item).where(
                Item.dataset_id == dataset_id,
                Item.status.in_([ItemStatus.PENDING, ItemStatus.FAILED, ItemStatus.GENERATING]))
        ) or 0
    if remaining == 0:
        return None
    # This process owns the database: whatever a killed run left `generating` is free.
    reclaim_stale_items(database, stale_after=timedelta(0))
    return start_run(database, dataset_id, endpoint, settings, ItemSelection.INCOMPLETE)


def _watch(database: Database, run_id: int, options: PipelineOptions, host: Any) -> RunProgress:
    from tqdm import tqdm

    progress = run_progress(database, run_id)
    bar = tqdm(total=progress.total, initial=progress.done, unit="item", desc="generating",
               file=sys.stderr, disable=None if options.show_progress is None
               else not options.show_progress, dynamic_ncols=True)
    try:
        while True:
            progress = run_progress(database, run_id)
            bar.update(progress.done - bar.n)
            errors = sum(progress.errors_by_type.values())
            bar.set_postfix_str(
                f"{progress.items_per_second:.1f} items/s, failed {progress.failed}, "
                f"errors {errors}, retries {progress.retries}", refresh=False)
            if progress.status.is_finished or progress.status is RunStatus.PAUSED:
                return progress
            if not host.is_alive:
                raise RuntimeError("the engine stopped unexpectedly; run the command again "
                                   "to resume (add --verbose to see why)")
            time.sleep(options.poll_interval)
    finally:
        bar.close()


def _pages(database: Database, dataset_id: int, statuses: Sequence[ItemStatus]
           ) -> Iterator[list[Item]]:
    last = -1
    while True:
        with database.read() as session:
            items = list(session.scalars(
                select(Item)
                .where(Item.dataset_id == dataset_id, Item.status.in_(list(statuses)),
                       Item.id > last)
                .order_by(Item.id)
                .limit(PAGE)
            ))
            if not items:
                return
            last = items[-1].id
            yield items


def _write_json_array(path: Path, records: Iterator[dict[str, Any]]) -> int:
    count = 0
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent,
                                         prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            handle.write("[")
            for record in records:
                handle.write(",\n  " if count else "\n  ")
                handle.write(json.dumps(record, ensure_ascii=False))
                count += 1
            handle.write("\n]\n" if count else "]\n")
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return count


def write_outputs(database: Database, dataset_id: int, out_dir: Path) -> tuple[int, int]:
    """Write results.json and errors.json; returns (results, errors) counts."""

    def results() -> Iterator[dict[str, Any]]:
        for items in _pages(database, dataset_id, OUTPUT_STATUSES):
            ids = [item.current_generation_id for item in items if item.current_generation_id]
            with database.read() as session:
                generations = {g.id: g for g in session.scalars(
                    select(Generation).where(Generation.id.in_(ids)))}
            for item in items:
                generation = generations.get(item.current_generation_id or -1)
                if generation is not None:
                    yield item_record(item, generation)

    def errors() -> Iterator[dict[str, Any]]:
        for items in _pages(database, dataset_id, [ItemStatus.FAILED]):
            with database.read() as session:
                newest = dict(session.execute(
                    select(Generation.item_id, func.max(Generation.id))
                    .where(Generation.item_id.in_([i.id for i in items]),
                           Generation.ok.is_(False))
                    .group_by(Generation.item_id)
                ).all())
                failures = {g.item_id: g for g in session.scalars(
                    select(Generation).where(Generation.id.in_(list(newest.values()))))}
            for item in items:
                failure = failures.get(item.id)
                record: dict[str, Any] = {
                    "id": item.external_id,
                    "image": item.image_ref,
                    "question": item.question,
                    "question_type": item.question_type.value,
                }
                for name, value in (item.extra or {}).items():
                    record.setdefault(name, value)
                record.update(
                    error_type=failure.error_type if failure else "unknown",
                    error_step=failure.error_step if failure else None,
                    message=(failure.error_message if failure else None) or item.last_error,
                    attempts=item.attempts,
                )
                yield record

    out_dir.mkdir(parents=True, exist_ok=True)
    return (_write_json_array(out_dir / RESULTS_FILE, results()),
            _write_json_array(out_dir / ERRORS_FILE, errors()))


def run_pipeline(options: PipelineOptions, *, out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr) -> PipelineResult:
    from vqa_engine.host import EngineHost
    from vqa_engine.worker import WorkerSettings

    if not options.input.is_file():
        raise ConfigError(f"input file {options.input} does not exist; check the path")
    if options.concurrency < 1:
        raise ConfigError(f"--concurrency {options.concurrency}: use 1 or more")
    endpoint = endpoint_for(options)
    settings = settings_for(options)
    out_dir = options.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    options = PipelineOptions(**{**options.__dict__, "out_dir": out_dir})
    database = open_database(f"sqlite:///{out_dir / DATABASE_FILE}")
    started = time.perf_counter()
    try:
        name = options.dataset or options.input.stem
        dataset_id = _dataset_id(database, options, name, out)
        run_id = _prepare_run(database, dataset_id, endpoint, settings, out)
        progress: RunProgress | None = None
        if run_id is not None:
            print(f"generating with {endpoint.model} at {endpoint.base_url} "
                  f"(key: {endpoint.masked_key}), concurrency {settings.concurrency}", file=out)
            host = EngineHost(
                database, data=out_dir, run_ids={run_id},
                settings=WorkerSettings(exclusive=True, poll_interval=min(0.5, options.poll_interval)),
            )
            host.provide_key(run_id, endpoint.api_key)
            host.start()
            try:
                progress = _watch(database, run_id, options, host)
            finally:
                host.stop()
            progress = run_progress(database, run_id)
        else:
            print("every item is already generated; writing the outputs", file=out)
        results, errors = write_outputs(database, dataset_id, out_dir)
        checked = (check_flag_counts(database, dataset_id)
                   if settings.model_checks.any else None)
    finally:
        database.close()
    elapsed = time.perf_counter() - started
    result = PipelineResult(
        exit_code=0, run_id=run_id, generated=results, failed=errors,
        results_path=out_dir / RESULTS_FILE, errors_path=out_dir / ERRORS_FILE,
        progress=progress,
    )
    print(_summary(result, progress, elapsed), file=out)
    if checked is not None:
        shown = ", ".join(f"{count} {name}" for name, count in checked.items())
        print(f"model checks: {shown}; to see the flagged items, run "
              f"`VQA_DATA_DIR={out_dir} make run` and filter by flag on the Review page",
              file=out)
    if progress is not None and progress.status is not RunStatus.COMPLETED:
        result.exit_code = 1
        result.message = progress.message or f"the run ended {progress.status.value}"
        print(f"error: {result.message}", file=err)
    elif results == 0 and errors > 0:
        result.exit_code = 1
        result.message = (
            f"no item was generated: all {errors} failed; the reason of each is in "
            f"{result.errors_path}; check the endpoint and run the same command again"
        )
        print(f"error: {result.message}", file=err)
    return result


def check_flag_counts(database: Database, dataset_id: int) -> dict[str, int]:
    """How many items' current generations carry each model-check flag."""
    counts = dict.fromkeys(CHECK_FLAGS, 0)
    statement = (
        select(Generation.quality_flags)
        .join(Item, Item.current_generation_id == Generation.id)
        .where(Item.dataset_id == dataset_id,
               cast(Generation.quality_flags, Text).not_in(["{}", "null"]))
        .execution_options(yield_per=PAGE)
    )
    with database.read() as session:
        for flags in session.scalars(statement):
            for name in CHECK_FLAGS:
                if (flags or {}).get(name):
                    counts[name] += 1
    return counts


def _summary(result: PipelineResult, progress: RunProgress | None, elapsed: float) -> str:
    lines = [f"{result.generated} item(s) generated -> {result.results_path}"]
    if result.failed:
        lines.append(f"{result.failed} item(s) failed -> {result.errors_path} "
                     "(run the same command again to retry them)")
    if progress is not None:
        lines.append(
            f"run {progress.run_id}: {progress.status.value}; {progress.requests} request(s), "
            f"{progress.ledger_hits} answered from the ledger, {progress.retries} retr"
            f"{'y' if progress.retries == 1 else 'ies'}, {progress.prompt_tokens} prompt + "
            f"{progress.completion_tokens} completion tokens, {elapsed:.1f} s")
        if progress.errors_by_type:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(progress.errors_by_type.items()))
            lines.append(f"errors seen (including retried ones): {shown}")
    return "\n".join(lines)
