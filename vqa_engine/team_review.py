"""Team review: several curators on one dataset, each handed a different item.

"Next item" claims a short lease on an item in the database, so two curators asking at the
same moment never get the same one: on SQLite the claim runs in a `BEGIN IMMEDIATE`
transaction (writers take turns), on PostgreSQL the lease row's primary key decides — a
conditional UPDATE re-checks an expired lease after any concurrent claim commits, and a
second INSERT of the same item fails and moves on. A lease is advisory: it only steers
"next"; anyone may still open and decide any item, and a curator holds at most one lease
per dataset (claiming the next item lets go of the last one).

Double review: a dataset asks for `reviews_required` distinct curators per item. A
curator's decision counts while it stands (not undone) and was made after the item's
content last changed (a model generation or an edit; a reshuffle keeps the texts, so it
keeps decisions). An item is handed to a curator only while it still needs decisions and
that curator has not decided it yet.

Errors: `ValidationError` (a reviews-required value out of range, an empty curator name).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    delete,
    distinct,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.engine import Database
from db.models import Dataset, Item, ItemStatus, ReviewEvent, ReviewLease, utcnow
from db.queries import ItemFilter, filtered_items
from vqa_engine.errors import ValidationError
from vqa_engine.health import Agreement, curator_decisions, standing_event
from vqa_engine.health import agreement_in_session as dataset_agreement
from vqa_engine.review import DECIDABLE, clean_curator
from vqa_engine.runs import as_utc

MAX_REVIEWS_REQUIRED = 5


@dataclass(frozen=True)
class LeaseSettings:
    """How long a handed-out item stays reserved, and how many candidates one query reads."""

    duration: timedelta = timedelta(minutes=5)
    page_size: int = 200


@dataclass(frozen=True)
class Lease:
    item_id: int
    curator: str
    expires_at: datetime


@dataclass(frozen=True)
class CuratorProgress:
    curator: str
    accepted: int
    rejected: int
    leased_item: int | None

    @property
    def decided(self) -> int:
        return self.accepted + self.rejected


@dataclass(frozen=True)
class TeamProgress:
    """Where a team stands on a dataset: items fully reviewed, agreement, who did what."""

    agreement: Agreement
    curators: tuple[CuratorProgress, ...]

    @property
    def fraction(self) -> float:
        done, total = self.agreement.fully_reviewed, self.agreement.reviewable
        return done / total if total else 0.0


# ---------------------------------------------------------------- settings


def reviews_required(database: Database, dataset_id: int) -> int:
    with database.read() as session:
        value = session.scalar(select(Dataset.reviews_required).where(Dataset.id == dataset_id))
    return int(value or 1)


def set_reviews_required(database: Database, dataset_id: int, count: int) -> None:
    """Ask for `count` distinct curators per item (1 = single review)."""
    if not 1 <= count <= MAX_REVIEWS_REQUIRED:
        raise ValidationError(
            f"{count} curators per item is out of range; choose 1 to {MAX_REVIEWS_REQUIRED}"
        )
    with database.write() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise ValidationError(f"dataset {dataset_id} does not exist; pick another dataset")
        dataset.reviews_required = count


# ---------------------------------------------------------------- decisions


def needs_decision_by(curator: str, required: int) -> ColumnElement[bool]:
    """True for an item with fewer than `required` standing decisions, none by `curator`.

    Correlated with the outer query's item and answered through the events' (item_id, id)
    index; the cheaper "not by this curator" is asked first and short-cuts the count.
    """
    mine = exists().where(ReviewEvent.item_id == Item.id, ReviewEvent.curator == curator,
                          standing_event())
    deciders = (
        select(func.count(distinct(ReviewEvent.curator)))
        .where(ReviewEvent.item_id == Item.id, standing_event())
        .scalar_subquery()
    )
    return and_(~mine, deciders < required)


# ---------------------------------------------------------------- leases


def _candidate_filter(item_filter: ItemFilter, required: int) -> ItemFilter:
    # With one review per item, "not decided yet" is exactly the generated status.
    statuses = (ItemStatus.GENERATED,) if required <= 1 else tuple(
        sorted(DECIDABLE, key=lambda status: status.value)
    )
    return replace(item_filter, statuses=statuses)


def _try_lease(session: Session, item_id: int, dataset_id: int, curator: str,
               now: datetime, expires: datetime) -> bool:
    taken = session.execute(
        update(ReviewLease)
        .where(
            ReviewLease.item_id == item_id,
            or_(ReviewLease.expires_at <= now, ReviewLease.curator == curator),
        )
        .values(curator=curator, claimed_at=now, expires_at=expires),
        execution_options={"synchronize_session": False},
    )
    if taken.rowcount == 1:
        return True
    if session.get(ReviewLease, item_id) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(ReviewLease(item_id=item_id, dataset_id=dataset_id, curator=curator,
                                    claimed_at=now, expires_at=expires))
    except IntegrityError:
        return False
    return True


def claim_next(
    database: Database,
    item_filter: ItemFilter,
    *,
    curator: str,
    skip: int | None = None,
    settings: LeaseSettings = LeaseSettings(),
    now: datetime | None = None,
) -> int | None:
    """Lease the first item of the filter this curator should review next, or None.

    The filter's type, run, flag and text apply; its statuses are replaced by what still
    needs review. The curator's own live lease is handed back first, so a reload or a
    second tab keeps showing the same item until it is decided; `skip` passes over it.
    Otherwise the search goes on from the curator's last item in source order and wraps
    around to the start, so every waiting item is reached.
    """
    if item_filter.dataset_id is None:
        raise ValidationError("team review needs a dataset; pick one in the sidebar")
    name = clean_curator(curator)
    dataset_id = item_filter.dataset_id
    moment = now or utcnow()
    expires = moment + settings.duration
    with database.write() as session:
        required = int(
            session.scalar(select(Dataset.reviews_required).where(Dataset.id == dataset_id)) or 1
        )
        candidates = _candidate_filter(item_filter, required)
        own, live = session.execute(
            select(ReviewLease.item_id, ReviewLease.expires_at > moment)
            .where(ReviewLease.dataset_id == dataset_id, ReviewLease.curator == name)
            .order_by(ReviewLease.claimed_at.desc())
            .limit(1)
        ).one_or_none() or (None, False)
        if live and own != skip and _still_needed(session, own, candidates, name, required):
            _try_lease(session, own, dataset_id, name, moment, expires)
            _release_others(session, dataset_id, name, keep=own)
            return own
        held_by_others = (
            select(ReviewLease.item_id)
            .where(
                ReviewLease.dataset_id == dataset_id,
                ReviewLease.curator != name,
                ReviewLease.expires_at > moment,
            )
        )
        waiting = _waiting(candidates, name, required).where(Item.id.not_in(held_by_others))
        if skip is not None:
            waiting = waiting.where(Item.id != skip)
        # Onwards from this curator's last item, then from the start: the reviewed stretch
        # behind a curator is not walked again on every click.
        for start in ((own, 0) if own else (0,)):
            last_id = start
            while page := list(session.scalars(
                waiting.where(Item.id > last_id).order_by(Item.id).limit(settings.page_size)
            )):
                last_id = page[-1]
                for item_id in page:
                    if _try_lease(session, item_id, dataset_id, name, moment, expires):
                        _release_others(session, dataset_id, name, keep=item_id)
                        return item_id
        _release_others(session, dataset_id, name, keep=None)
        return None


def _waiting(candidates: ItemFilter, curator: str, required: int) -> Select[tuple[int]]:
    return filtered_items(select(Item.id).select_from(Item), candidates).where(
        needs_decision_by(curator, required)
    )


def _still_needed(session: Session, item_id: int, candidates: ItemFilter, curator: str,
                  required: int) -> bool:
    found = session.scalar(_waiting(candidates, curator, required).where(Item.id == item_id))
    return found is not None


def _release_others(session: Session, dataset_id: int, curator: str, keep: int | None) -> None:
    statement = delete(ReviewLease).where(
        ReviewLease.dataset_id == dataset_id, ReviewLease.curator == curator
    )
    if keep is not None:
        statement = statement.where(ReviewLease.item_id != keep)
    session.execute(statement, execution_options={"synchronize_session": False})


def release(database: Database, dataset_id: int, *, curator: str) -> int:
    """Give back this curator's leases on a dataset (leaving team review); returns how many."""
    name = clean_curator(curator)
    with database.write() as session:
        result = session.execute(
            delete(ReviewLease).where(
                ReviewLease.dataset_id == dataset_id, ReviewLease.curator == name
            ),
            execution_options={"synchronize_session": False},
        )
        return int(result.rowcount or 0)


def lease_of(database: Database, item_id: int, *, now: datetime | None = None) -> Lease | None:
    """The live lease on an item, so a card can say who else is looking at it."""
    moment = now or utcnow()
    with database.read() as session:
        lease = session.scalar(select(ReviewLease).where(
            ReviewLease.item_id == item_id, ReviewLease.expires_at > moment
        ))
        if lease is None:
            return None
        return Lease(lease.item_id, lease.curator, as_utc(lease.expires_at))


# ---------------------------------------------------------------- progress


def team_progress(
    database: Database, dataset_id: int, *, now: datetime | None = None
) -> TeamProgress:
    """Items reviewed by enough curators, and each curator's standing decisions and lease."""
    moment = now or utcnow()
    with database.read() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise ValidationError(f"dataset {dataset_id} does not exist; pick another dataset")
        agreed = dataset_agreement(session, dataset)
        decisions = {c.curator: c for c in curator_decisions(session, dataset_id)}
        leases = dict(
            session.execute(
                select(ReviewLease.curator, ReviewLease.item_id).where(
                    ReviewLease.dataset_id == dataset_id, ReviewLease.expires_at > moment
                )
            ).all()
        )
    names = sorted(set(decisions) | set(leases))
    curators = tuple(
        CuratorProgress(
            name,
            decisions[name].accepted if name in decisions else 0,
            decisions[name].rejected if name in decisions else 0,
            leases.get(name),
        )
        for name in names
    )
    return TeamProgress(agreed, curators)
