"""Endpoint settings: precedence, placeholder keys, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from vqa_engine.errors import ConfigError
from vqa_engine.settings import DEFAULT_BASE_URL, mask_key, resolve_endpoint

KEY = "sk-abcdefghijklmnop9f3a"


def test_a_key_is_shown_with_its_prefix_and_last_four_characters_only() -> None:
    assert mask_key(KEY) == "sk-...9f3a"
    assert mask_key("short") == "***"
    assert mask_key(None) == "(none)"


@pytest.mark.parametrize("placeholder", ["", "1", "EMPTY", "none"])
def test_placeholder_keys_count_as_no_key(placeholder: str, data_dir: Path) -> None:
    endpoint = resolve_endpoint(api_key=placeholder, secrets_path=data_dir / "none.toml")
    assert not endpoint.has_key
    assert endpoint.api_key is None


def test_the_form_beats_the_environment_which_beats_secrets_toml(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = data_dir / "secrets.toml"
    secrets.write_text('VQA_BASE_URL = "http://secret/v1"\nVQA_API_KEY = "sk-from-secrets-0000"\n')
    from_secrets = resolve_endpoint(secrets_path=secrets)
    assert (from_secrets.base_url, from_secrets.key_source) == (
        "http://secret/v1", "secrets.toml entry VQA_API_KEY")

    monkeypatch.setenv("VQA_BASE_URL", "http://env/v1/")
    monkeypatch.setenv("VQA_API_KEY", KEY)
    from_env = resolve_endpoint(secrets_path=secrets)
    assert (from_env.base_url, from_env.api_key) == ("http://env/v1", KEY)
    assert from_env.key_source == "environment variable VQA_API_KEY"

    from_form = resolve_endpoint("http://form/v1", api_key="sk-form-key-123456", secrets_path=secrets)
    assert (from_form.base_url, from_form.key_source) == ("http://form/v1", "the run form")


def test_defaults_point_at_a_local_vllm(data_dir: Path) -> None:
    endpoint = resolve_endpoint(secrets_path=data_dir / "none.toml")
    assert endpoint.base_url == DEFAULT_BASE_URL
    assert endpoint.key_source == "none"


def test_a_snapshot_never_contains_the_key(data_dir: Path) -> None:
    endpoint = resolve_endpoint(api_key=KEY, secrets_path=data_dir / "none.toml")
    assert KEY not in repr(endpoint)
    assert KEY not in str(endpoint.snapshot())
    assert endpoint.snapshot()["key"] == "sk-...9f3a"


def test_a_broken_secrets_file_names_itself_and_the_fix(data_dir: Path) -> None:
    secrets = data_dir / "secrets.toml"
    secrets.write_text("VQA_API_KEY = ")
    with pytest.raises(ConfigError, match="secrets.toml is not valid TOML.*fix or remove"):
        resolve_endpoint(secrets_path=secrets)
