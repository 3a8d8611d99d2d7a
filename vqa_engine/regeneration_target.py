"""Which endpoint and settings regenerate an item: those of the run that made it.

A curator who regenerates an item from the review page expects the same model, prompts and
sampling as the rest of the dataset, so the item's last run's stored configuration is
reused, and its key is found again the way the worker finds it: from the environment
variable or secrets.toml entry the run recorded. A key typed into a run form was never
stored; the caller must supply it again (`typed_key`), and `key_missing` says so.
Items never generated use the default endpoint and the prompts in force.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from db.engine import Database
from db.models import Item, Run
from vqa_engine.errors import ValidationError
from vqa_engine.generator import GenerationSettings
from vqa_engine.prompt_store import current_prompts
from vqa_engine.runs import KeyOrigin, RunSettings, run_endpoint
from vqa_engine.settings import Endpoint, is_placeholder_key, read_secrets, resolve_endpoint


@dataclass(frozen=True)
class RegenerationTarget:
    endpoint: Endpoint
    settings: RunSettings
    run_id: int | None  # the run whose configuration is reused
    key_missing: str | None = None  # why a key must be typed again, if it must

    @property
    def ready(self) -> bool:
        return self.key_missing is None


def _found_key(origin: KeyOrigin, typed_key: str | None, secrets_path: Path | None) -> str | None:
    if typed_key and not is_placeholder_key(typed_key):
        return typed_key
    if origin.kind == "env" and origin.name:
        return os.environ.get(origin.name)
    if origin.kind == "secret" and origin.name:
        value = read_secrets(secrets_path).get(origin.name)
        return str(value) if value is not None else None
    return None


def regeneration_target(
    database: Database,
    item_id: int,
    *,
    typed_key: str | None = None,
    secrets_path: Path | None = None,
) -> RegenerationTarget:
    with database.read() as session:
        item = session.get(Item, item_id)
        if item is None:
            raise ValidationError(f"item {item_id} does not exist; go back to the item list")
        run = session.get(Run, item.run_id) if item.run_id is not None else None
    if run is None:
        settings = RunSettings(generation=GenerationSettings(prompts=current_prompts(database)))
        return RegenerationTarget(resolve_endpoint(secrets_path=secrets_path), settings, None)
    config = dict(run.config or {})
    origin = KeyOrigin.from_config(config)
    key = _found_key(origin, typed_key, secrets_path)
    settings = RunSettings.from_config(config.get("settings") or {})
    endpoint = run_endpoint(config, key if key and not is_placeholder_key(key) else None)
    missing: str | None = None
    if origin.kind != "none" and not endpoint.has_key:
        if origin.kind == "form":
            missing = (
                f"run {run.id} used an API key typed into its run form, which is kept only in "
                "memory; type the key again to regenerate with the same endpoint"
            )
        else:
            missing = (
                f"run {run.id} read its API key from {origin.source}, which is not set now; "
                "set it (or type the key) to regenerate with the same endpoint"
            )
    return RegenerationTarget(endpoint, settings, run.id, missing)
