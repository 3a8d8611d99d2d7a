"""Endpoint profiles: stored without keys, resolved from the environment or secrets.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.engine import Database
from vqa_engine.errors import ConfigError
from vqa_engine.profiles import (
    SIMULATOR_PROFILE,
    ProfileSpec,
    delete_profile,
    get_profile,
    list_profiles,
    save_profile,
    save_simulator_profile,
)

SECRET = "sk-profiletest-abcdef-9f3a"


def test_profile_key_comes_from_the_named_environment_variable(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_VLM_KEY", SECRET)
    profile_id = save_profile(
        database, ProfileSpec("dashscope", "https://example.test/v1/", "qwen-vl", key_env="MY_VLM_KEY")
    )
    profile = get_profile(database, profile_id)
    endpoint = profile.endpoint()
    assert profile.base_url == "https://example.test/v1"
    assert endpoint.api_key == SECRET
    assert endpoint.masked_key == "sk-...9f3a"
    assert "MY_VLM_KEY" in endpoint.key_source


def test_profile_key_comes_from_the_named_secrets_entry(database: Database, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'TEAM_KEY = "{SECRET}"\n')
    profile_id = save_profile(
        database, ProfileSpec("team", "http://127.0.0.1:9/v1", "m", key_secret="TEAM_KEY")
    )
    endpoint = get_profile(database, profile_id).endpoint(secrets_path=secrets)
    assert endpoint.api_key == SECRET


def test_the_key_never_reaches_the_database_file(
    database: Database, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_VLM_KEY", SECRET)
    profile_id = save_profile(
        database, ProfileSpec("p", "http://127.0.0.1:9/v1", "m", key_env="MY_VLM_KEY")
    )
    get_profile(database, profile_id).endpoint()
    database.close()
    for path in data_dir.glob("vqa.db*"):
        assert SECRET.encode() not in path.read_bytes()


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (ProfileSpec("", "http://x/v1", "m"), "name"),
        (ProfileSpec("p", "ftp://x/v1", "m"), "http(s)"),
        (ProfileSpec("p", "http://x/v1", " "), "model"),
        (ProfileSpec("p", "http://x/v1", "m", key_env="A", key_secret="B"), "choose one"),
        (ProfileSpec("p", "http://x/v1", "m", key_env="sk-abc 123"), "never the key itself"),
    ],
)
def test_an_invalid_profile_is_refused_with_the_reason(
    database: Database, spec: ProfileSpec, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        save_profile(database, spec)
    assert list_profiles(database) == []


def test_profile_names_are_unique_and_updates_keep_the_id(database: Database) -> None:
    first = save_profile(database, ProfileSpec("a", "http://x/v1", "m1"))
    with pytest.raises(ConfigError, match="already exists"):
        save_profile(database, ProfileSpec("a", "http://y/v1", "m2"))
    assert save_profile(database, ProfileSpec("a", "http://y/v1", "m2"), profile_id=first) == first
    assert get_profile(database, first).model == "m2"
    delete_profile(database, first)
    assert list_profiles(database) == []


def test_simulator_profile_is_flagged_and_repointed_on_restart(database: Database) -> None:
    first = save_simulator_profile(database, "http://127.0.0.1:5001/v1", "sim")
    second = save_simulator_profile(database, "http://127.0.0.1:5002/v1", "sim")
    assert first == second
    profile = get_profile(database, first)
    assert profile.simulated and profile.name == SIMULATOR_PROFILE
    assert profile.base_url.endswith(":5002/v1")
