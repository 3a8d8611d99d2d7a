"""Endpoint settings and the API key's journey: found, used, never written down.

Settings come from, in order: what the caller passes (run form, CLI flags), the
environment (`VQA_BASE_URL`, `VQA_MODEL`, `VQA_API_KEY`), `.streamlit/secrets.toml`.
The key is kept only in memory; everything that is displayed or stored uses
`mask_key` or `Endpoint.snapshot()`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BASE_URL = "http://localhost:8000/v1"
DEFAULT_MODEL = "qwen2.5-vl-7b-instruct"
PLACEHOLDER_KEYS = frozenset({"", "1", "none", "null", "empty", "your-api-key", "sk-xxx", "EMPTY"})
SECRETS_FILE = Path(".streamlit/secrets.toml")


def mask_key(key: str | None) -> str:
    """`sk-abcdef123456789f3a` -> `sk-...9f3a`; short or missing keys reveal nothing."""
    if not key or is_placeholder_key(key):
        return "(none)"
    if len(key) < 12:
        return "***"
    prefix = key[:3] if key[:3].isalpha() or key.startswith("sk-") else ""
    return f"{prefix}...{key[-4:]}"


def is_placeholder_key(key: str | None) -> bool:
    return key is None or key.strip() in PLACEHOLDER_KEYS or key.strip().lower() in PLACEHOLDER_KEYS


def read_secrets(path: Path | None = None) -> dict[str, Any]:
    path = path or SECRETS_FILE
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        from vqa_engine.errors import ConfigError

        raise ConfigError(f"{path} is not valid TOML ({exc}); fix or remove the file") from None


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests. `key_source` says where the key came from, for messages."""

    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key: str | None = field(default=None, repr=False)
    key_source: str = "none"

    @property
    def has_key(self) -> bool:
        return not is_placeholder_key(self.api_key)

    @property
    def masked_key(self) -> str:
        return mask_key(self.api_key)

    def snapshot(self) -> dict[str, Any]:
        """What may be stored with a run: everything but the key."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "key_source": self.key_source,
            "key": self.masked_key,
        }


def resolve_endpoint(
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    *,
    api_key_env: str | None = None,
    secret_name: str | None = None,
    secrets_path: Path | None = None,
) -> Endpoint:
    """Combine explicit values, the environment and secrets.toml, in that order."""
    secrets: dict[str, Any] | None = None

    def secret(name: str) -> str | None:
        nonlocal secrets
        if secrets is None:
            secrets = read_secrets(secrets_path)
        value = secrets.get(name)
        return str(value) if value is not None else None

    url = base_url or os.environ.get("VQA_BASE_URL") or secret("VQA_BASE_URL") or DEFAULT_BASE_URL
    name = model or os.environ.get("VQA_MODEL") or secret("VQA_MODEL") or DEFAULT_MODEL

    key: str | None = None
    source = "none"
    if api_key:
        key, source = api_key, "the run form"
    elif api_key_env:
        key, source = os.environ.get(api_key_env), f"environment variable {api_key_env}"
    elif secret_name:
        key, source = secret(secret_name), f"secrets.toml entry {secret_name}"
    elif os.environ.get("VQA_API_KEY"):
        key, source = os.environ["VQA_API_KEY"], "environment variable VQA_API_KEY"
    elif secret("VQA_API_KEY"):
        key, source = secret("VQA_API_KEY"), "secrets.toml entry VQA_API_KEY"
    if is_placeholder_key(key):
        key = None
    return Endpoint(base_url=url.rstrip("/"), model=name, api_key=key, key_source=source)
