"""Named endpoint profiles: where to send requests, and where the key lives.

A profile stores a base URL, a model and the *name* of the place its key comes from (an
environment variable or a `secrets.toml` entry), never the key itself. Resolving a profile
reads the key at that moment, so rotating a key needs no change in the database, and the
database never holds a secret. The simulator's profile is flagged `simulated` so every
screen that offers it can say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy import select

from db.engine import Database
from db.models import EndpointProfile
from vqa_engine.errors import ConfigError
from vqa_engine.settings import Endpoint, resolve_endpoint

SIMULATOR_PROFILE = "Simulator (SIMULATED)"
MAX_NAME_LENGTH = 100
_KEY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


@dataclass(frozen=True)
class ProfileSpec:
    """What a curator fills in. Exactly zero or one of `key_env` / `key_secret` is set."""

    name: str
    base_url: str
    model: str
    key_env: str | None = None
    key_secret: str | None = None
    simulated: bool = False


@dataclass(frozen=True)
class Profile:
    id: int
    name: str
    base_url: str
    model: str
    key_env: str | None
    key_secret: str | None
    simulated: bool

    @property
    def key_location(self) -> str:
        if self.key_env:
            return f"environment variable {self.key_env}"
        if self.key_secret:
            return f"secrets.toml entry {self.key_secret}"
        return "no key (local endpoint)"

    def endpoint(self, *, secrets_path: Path | None = None) -> Endpoint:
        """The profile with its key read now from the environment or secrets.toml."""
        return resolve_endpoint(
            self.base_url,
            self.model,
            api_key_env=self.key_env,
            secret_name=self.key_secret,
            secrets_path=secrets_path,
        )


def _profile(row: EndpointProfile) -> Profile:
    return Profile(
        id=row.id,
        name=row.name,
        base_url=row.base_url,
        model=row.model,
        key_env=row.key_env,
        key_secret=row.key_secret,
        simulated=row.simulated,
    )


def validate_spec(spec: ProfileSpec) -> ProfileSpec:
    """The spec trimmed, or ConfigError naming the bad field and how to fix it."""
    name = spec.name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(
            f"profile name {spec.name!r} is empty or longer than {MAX_NAME_LENGTH} characters; "
            "give the profile a short name"
        )
    base_url = spec.base_url.strip().rstrip("/")
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"base URL {spec.base_url!r} is not an http(s) URL; "
            "use the endpoint's OpenAI-compatible root, e.g. http://localhost:8000/v1"
        )
    model = spec.model.strip()
    if not model:
        raise ConfigError(f"profile {name!r} has no model; enter the model name the endpoint serves")
    key_env = (spec.key_env or "").strip() or None
    key_secret = (spec.key_secret or "").strip() or None
    if key_env and key_secret:
        raise ConfigError(
            f"profile {name!r} names both environment variable {key_env} and secrets entry "
            f"{key_secret}; choose one place for the key"
        )
    for label, value in (("environment variable", key_env), ("secrets entry", key_secret)):
        if value is not None and not _KEY_NAME.match(value):
            raise ConfigError(
                f"{label} name {value!r} is not a valid name (letters, digits, underscore); "
                "enter the variable's name, never the key itself"
            )
    return ProfileSpec(name, base_url, model, key_env, key_secret, spec.simulated)


def list_profiles(database: Database) -> list[Profile]:
    with database.read() as session:
        rows = session.scalars(select(EndpointProfile).order_by(EndpointProfile.name))
        return [_profile(row) for row in rows]


def get_profile(database: Database, profile_id: int) -> Profile:
    with database.read() as session:
        row = session.get(EndpointProfile, profile_id)
        if row is None:
            raise ConfigError(f"endpoint profile {profile_id} does not exist; pick another one")
        return _profile(row)


def save_profile(database: Database, spec: ProfileSpec, *, profile_id: int | None = None) -> int:
    """Create a profile, or update `profile_id`; returns its id. Names are unique."""
    clean = validate_spec(spec)
    with database.write() as session:
        clash = session.scalar(select(EndpointProfile).where(EndpointProfile.name == clean.name))
        if clash is not None and clash.id != profile_id:
            raise ConfigError(
                f"an endpoint profile named {clean.name!r} already exists; "
                "choose another name or edit that profile"
            )
        if profile_id is None:
            row = EndpointProfile(name=clean.name)
            session.add(row)
        else:
            row = session.get(EndpointProfile, profile_id)
            if row is None:
                raise ConfigError(f"endpoint profile {profile_id} does not exist; reload the page")
            row.name = clean.name
        row.base_url = clean.base_url
        row.model = clean.model
        row.key_env = clean.key_env
        row.key_secret = clean.key_secret
        row.simulated = clean.simulated
        session.flush()
        return row.id


def delete_profile(database: Database, profile_id: int) -> None:
    with database.write() as session:
        row = session.get(EndpointProfile, profile_id)
        if row is not None:
            session.delete(row)


def save_simulator_profile(database: Database, base_url: str, model: str) -> int:
    """Create or repoint the simulator's profile (its port changes with every start)."""
    with database.read() as session:
        existing = session.scalar(
            select(EndpointProfile.id).where(EndpointProfile.name == SIMULATOR_PROFILE)
        )
    spec = ProfileSpec(SIMULATOR_PROFILE, base_url, model, simulated=True)
    return save_profile(database, spec, profile_id=existing)
