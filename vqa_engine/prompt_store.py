"""Prompt templates a curator may edit, kept as versions in the `prompt_templates` table.

`prompts.PromptSet` holds the wording shipped with the code. An edit adds a row (name,
per-name version number, text); the newest row of a name wins. Nothing is deleted, so every
earlier wording can be looked at again, and "reset to default" is one more row holding the
default text. The set in force gets a version string derived from the edited texts, so the
Generation rows say which wording produced them and a changed template changes the
requests' ledger keys (through the prompt text) without any bookkeeping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from db.engine import Database
from db.models import PromptTemplate
from vqa_engine.errors import ValidationError
from vqa_engine.prompts import DEFAULT_PROMPTS, PromptSet

MAX_TEMPLATE_CHARS = 20_000


@dataclass(frozen=True)
class TemplateVersion:
    id: int
    name: str
    version: int
    text: str
    created_at: datetime

    @property
    def is_default(self) -> bool:
        return self.text == default_text(self.name)


def template_names() -> tuple[str, ...]:
    return PromptSet.template_names()


def default_text(name: str) -> str:
    _check_name(name)
    return str(getattr(DEFAULT_PROMPTS, name))


def _check_name(name: str) -> None:
    if name not in template_names():
        raise ValidationError(
            f"there is no prompt template named {name!r}; use one of {', '.join(template_names())}"
        )


def _version(row: PromptTemplate) -> TemplateVersion:
    try:
        number = int(row.version)
    except ValueError:
        number = 0
    return TemplateVersion(row.id, row.name, number, row.text, row.created_at)


def validate_template(name: str, text: str) -> None:
    """ValidationError naming the missing placeholder(s) or the size problem."""
    _check_name(name)
    if not text.strip():
        raise ValidationError(f"template {name} is empty; write the prompt or reset it to default")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ValidationError(
            f"template {name} has {len(text)} characters; keep it under {MAX_TEMPLATE_CHARS}"
        )
    candidate = DEFAULT_PROMPTS.with_overrides({name: text}, version="candidate")
    missing = candidate.missing_placeholders().get(name, [])
    if missing:
        wanted = ", ".join(f"${p}" for p in missing)
        raise ValidationError(
            f"template {name} lacks {wanted}; the generator fills these in, put them back"
        )


def save_template(database: Database, name: str, text: str) -> TemplateVersion:
    """Store `text` as the newest version of `name` (a no-op if it is already current)."""
    validate_template(name, text)
    with database.write() as session:
        newest = session.scalar(
            select(PromptTemplate)
            .where(PromptTemplate.name == name)
            .order_by(PromptTemplate.id.desc())
            .limit(1)
        )
        current_text = newest.text if newest is not None else default_text(name)
        if text == current_text and newest is not None:
            return _version(newest)
        if text == current_text:
            raise ValidationError(f"template {name} is unchanged; edit the text before saving")
        count = session.scalar(
            select(func.count()).select_from(PromptTemplate).where(PromptTemplate.name == name)
        ) or 0
        row = PromptTemplate(name=name, version=str(count + 1), text=text)
        session.add(row)
        session.flush()
        return _version(row)


def reset_template(database: Database, name: str) -> TemplateVersion | None:
    """Put the shipped wording back (as a new version); None if it is already in force."""
    text = default_text(name)
    if current_text(database, name) == text:
        return None
    with database.write() as session:
        count = session.scalar(
            select(func.count()).select_from(PromptTemplate).where(PromptTemplate.name == name)
        ) or 0
        row = PromptTemplate(name=name, version=str(count + 1), text=text)
        session.add(row)
        session.flush()
        return _version(row)


def history(database: Database, name: str) -> list[TemplateVersion]:
    """Every stored version of `name`, newest first (empty: never edited)."""
    _check_name(name)
    with database.read() as session:
        rows = session.scalars(
            select(PromptTemplate)
            .where(PromptTemplate.name == name)
            .order_by(PromptTemplate.id.desc())
        )
        return [_version(row) for row in rows]


def current_text(database: Database, name: str) -> str:
    versions = history(database, name)
    return versions[0].text if versions else default_text(name)


def current_prompts(database: Database) -> PromptSet:
    """The prompt set in force: defaults with the newest edit of each template applied."""
    newest_ids = select(func.max(PromptTemplate.id)).group_by(PromptTemplate.name)
    with database.read() as session:
        rows = list(session.scalars(select(PromptTemplate).where(PromptTemplate.id.in_(newest_ids))))
    edited = {
        row.name: row.text
        for row in rows
        if row.name in template_names() and row.text != default_text(row.name)
    }
    if not edited:
        return DEFAULT_PROMPTS
    digest = hashlib.sha256()
    for name in sorted(edited):
        digest.update(name.encode() + b"\0" + edited[name].encode() + b"\0")
    return DEFAULT_PROMPTS.with_overrides(
        edited, version=f"{DEFAULT_PROMPTS.version}+{digest.hexdigest()[:8]}"
    )
