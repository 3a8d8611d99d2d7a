"""The schema: every durable fact of VQA Curator lives in these tables.

Nothing is overwritten. An item points at its current Generation; earlier generations,
edits and review decisions stay as rows, so history and undo are queries, not logs.
Portable across SQLite and PostgreSQL: JSON columns, enums stored as strings, no
dialect-only SQL.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as the value string (not a native PG enum) so new members need no migration.
    return Enum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )


class QuestionType(str, enum.Enum):
    MULTIPLE_CHOICE = "multiple_choice"
    FILL_IN_BLANK = "fill_in_blank"


class ItemStatus(str, enum.Enum):
    PENDING = "pending"
    GENERATING = "generating"
    GENERATED = "generated"
    FAILED = "failed"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class RunStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_active(self) -> bool:
        return self in (RunStatus.QUEUED, RunStatus.RUNNING)

    @property
    def is_finished(self) -> bool:
        return self in (RunStatus.CANCELLED, RunStatus.COMPLETED, RunStatus.FAILED)


class GenerationSource(str, enum.Enum):
    MODEL = "model"
    EDIT = "edit"
    RESHUFFLE = "reshuffle"


class RegenerateScope(str, enum.Enum):
    WHOLE = "whole"
    DISTRACTORS = "distractors"


class ReviewAction(str, enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    EDIT = "edit"
    REGENERATE = "regenerate"
    RESHUFFLE = "reshuffle"
    UNDO = "undo"


class BulkAction(str, enum.Enum):
    """What one curator did to many items at once; each item also gets its own event."""

    ACCEPT = "accept"
    REJECT = "reject"
    REGENERATE = "regenerate"
    RESHUFFLE = "reshuffle"
    BALANCE = "balance"


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    default_question_type: Mapped[QuestionType | None] = mapped_column(_enum(QuestionType))
    source_name: Mapped[str] = mapped_column(String(500), default="")
    # Distinct curators who must decide an item before it counts as reviewed (double review).
    reviews_required: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    items: Mapped[list[Item]] = relationship(back_populates="dataset", lazy="raise")


class Image(Base):
    """One stored image, content-addressed: the same bytes are kept once whatever the name."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    original_name: Mapped[str] = mapped_column(String(500))
    original_path: Mapped[str] = mapped_column(String(500))  # relative to the data dir
    prepared_path: Mapped[str] = mapped_column(String(500))  # model-ready JPEG, relative
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    byte_size: Mapped[int] = mapped_column(BigInteger)
    prepared_width: Mapped[int] = mapped_column(Integer)
    prepared_height: Mapped[int] = mapped_column(Integer)
    prepared_byte_size: Mapped[int] = mapped_column(BigInteger)
    prepared_quality: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("dataset_id", "external_id", name="uq_items_dataset_external_id"),
        Index("ix_items_dataset_status", "dataset_id", "status"),
        # Walks a dataset in source order (review table, next/previous, export) without a sort.
        Index("ix_items_dataset_id", "dataset_id", "id"),
        Index("ix_items_dataset_type", "dataset_id", "question_type"),
        Index("ix_items_run_status", "run_id", "status"),
        Index("ix_items_external_id", "external_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # row order in the source file
    external_id: Mapped[str] = mapped_column(String(200))
    question: Mapped[str] = mapped_column(Text)
    question_type: Mapped[QuestionType] = mapped_column(_enum(QuestionType))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    image_ref: Mapped[str] = mapped_column(String(1000))  # the `image` field as given
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)  # other input fields, verbatim
    status: Mapped[ItemStatus] = mapped_column(_enum(ItemStatus), default=ItemStatus.PENDING)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    current_generation_id: Mapped[int | None] = mapped_column(
        ForeignKey("generations.id", use_alter=True, ondelete="SET NULL")
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    regeneration: Mapped[int] = mapped_column(Integer, default=0)
    regenerate_scope: Mapped[RegenerateScope | None] = mapped_column(_enum(RegenerateScope))
    regenerate_reason: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    dataset: Mapped[Dataset] = relationship(back_populates="items", lazy="raise")
    image: Mapped[Image] = relationship(lazy="raise")

    # Optimistic locking: an UPDATE that finds another version raises StaleDataError.
    __mapper_args__ = {"version_id_col": version}


class Run(Base):
    """A generation run. Counters are kept here so a dashboard polls one row."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_status", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus), default=RunStatus.QUEUED)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # snapshot, never a secret
    total_items: Mapped[int] = mapped_column(Integer, default=0)
    generated_items: Mapped[int] = mapped_column(Integer, default=0)
    failed_items: Mapped[int] = mapped_column(Integer, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    ledger_hits: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    errors_by_type: Mapped[dict[str, Any]] = mapped_column(default=dict)
    message: Mapped[str | None] = mapped_column(Text)  # why it stopped, if it did
    worker_id: Mapped[str | None] = mapped_column(String(100))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Generation(Base):
    """One attempt at an item, successful or not, from the model or from a curator's edit."""

    __tablename__ = "generations"
    __table_args__ = (
        Index("ix_generations_item", "item_id", "id"),
        Index("ix_generations_run_created", "run_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    source: Mapped[GenerationSource] = mapped_column(
        _enum(GenerationSource), default=GenerationSource.MODEL
    )
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    answer: Mapped[str | None] = mapped_column(Text)
    explanation: Mapped[str | None] = mapped_column(Text)
    distractors: Mapped[list[Any]] = mapped_column(default=list)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"A": "...", ...}
    correct_letter: Mapped[str | None] = mapped_column(String(4))
    shuffle_seed: Mapped[int | None] = mapped_column(BigInteger)
    full_question: Mapped[str | None] = mapped_column(Text)
    raw_answer: Mapped[str | None] = mapped_column(Text)
    raw_distractors: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200))
    prompt_version: Mapped[str | None] = mapped_column(String(40))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    error_type: Mapped[str | None] = mapped_column(String(40))
    error_step: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    quality_flags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LedgerEntry(Base):
    """One model request, keyed by the hash of its canonical form.

    A successful entry is reused instead of paying for the same request again; failed
    entries are kept for diagnosis and never reused.
    """

    __tablename__ = "ledger"
    __table_args__ = (Index("ix_ledger_key_ok", "key", "ok"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(20))  # answer | distractors | check
    model: Mapped[str] = mapped_column(String(200))
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    ok: Mapped[bool] = mapped_column(Boolean)
    response_text: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(40))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReviewBatch(Base):
    """One bulk action; its per-item events point here so the whole batch undoes as one."""

    __tablename__ = "review_batches"
    __table_args__ = (Index("ix_review_batches_dataset", "dataset_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    curator: Mapped[str] = mapped_column(String(200))
    action: Mapped[BulkAction] = mapped_column(_enum(BulkAction))
    description: Mapped[str] = mapped_column(Text, default="")  # the filter it applied to
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    undone_by: Mapped[str | None] = mapped_column(String(200))


class ReviewLease(Base):
    """A curator's short claim on an item, so "next item" hands each curator a different one."""

    __tablename__ = "review_leases"
    __table_args__ = (Index("ix_review_leases_dataset_expires", "dataset_id", "expires_at"),)

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    curator: Mapped[str] = mapped_column(String(200))
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReviewEvent(Base):
    __tablename__ = "review_events"
    __table_args__ = (
        Index("ix_review_events_item", "item_id", "id"),
        Index("ix_review_events_curator", "curator"),
        Index("ix_review_events_batch", "batch_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    curator: Mapped[str] = mapped_column(String(200))
    action: Mapped[ReviewAction] = mapped_column(_enum(ReviewAction))
    before: Mapped[dict[str, Any]] = mapped_column(default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    undone_by: Mapped[int | None] = mapped_column(Integer)  # the UNDO event's id
    batch_id: Mapped[int | None] = mapped_column(
        ForeignKey("review_batches.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EndpointProfile(Base):
    """A named endpoint. The key is never stored: only where to read it from."""

    __tablename__ = "endpoint_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    base_url: Mapped[str] = mapped_column(String(500))
    model: Mapped[str] = mapped_column(String(200))
    key_env: Mapped[str | None] = mapped_column(String(100))  # environment variable name
    key_secret: Mapped[str | None] = mapped_column(String(100))  # secrets.toml entry name
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PromptTemplate(Base):
    """An edited prompt. The newest row per name wins; deleting all rows resets to default."""

    __tablename__ = "prompt_templates"
    __table_args__ = (Index("ix_prompt_templates_name", "name", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(40))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
