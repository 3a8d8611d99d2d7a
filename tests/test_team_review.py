"""Team review on real databases: "next item" hands each curator a different item."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from curated_rows import add_dataset, add_image, add_item
from db.engine import Database
from db.models import Item, ItemStatus, QuestionType, ReviewEvent, utcnow
from db.queries import ItemFilter
from vqa_engine import review
from vqa_engine.errors import ValidationError
from vqa_engine.team_review import (
    LeaseSettings,
    claim_next,
    lease_of,
    release,
    reviews_required,
    set_reviews_required,
    team_progress,
)


def make_dataset(database: Database, data_dir: Path, count: int = 6, name: str = "animals") -> int:
    with database.write() as session:
        dataset = add_dataset(session, name)
        image = add_image(session, data_dir)
        for index in range(count):
            add_item(session, dataset, image, external_id=f"q{index}", answer=f"cat{index}")
        add_item(session, dataset, image, external_id="waiting", status=ItemStatus.PENDING)
        return dataset.id


def ids_of(database: Database, dataset_id: int) -> list[int]:
    with database.read() as session:
        return list(session.scalars(
            select(Item.id).where(Item.dataset_id == dataset_id,
                                  Item.status == ItemStatus.GENERATED).order_by(Item.id)
        ))


def decide(database: Database, item_id: int, curator: str, accept: bool = True) -> None:
    with database.read() as session:
        version = session.get_one(Item, item_id).version
    action = review.accept if accept else review.reject
    action(database, item_id, curator=curator, expected_version=version)


def test_next_hands_two_curators_different_items(database: Database, data_dir: Path) -> None:
    dataset_id = make_dataset(database, data_dir)
    ids = ids_of(database, dataset_id)
    scope = ItemFilter(dataset_id=dataset_id)
    assert claim_next(database, scope, curator="ana") == ids[0]
    assert claim_next(database, scope, curator="ben") == ids[1]
    assert lease_of(database, ids[0]).curator == "ana"


def test_a_reload_keeps_the_same_item_until_it_is_decided(database: Database, data_dir: Path) -> None:
    dataset_id = make_dataset(database, data_dir)
    ids = ids_of(database, dataset_id)
    scope = ItemFilter(dataset_id=dataset_id)
    first = claim_next(database, scope, curator="ana")
    assert claim_next(database, scope, curator="ana") == first
    decide(database, first, "ana")
    second = claim_next(database, scope, curator="ana")
    assert second == ids[1]
    assert lease_of(database, first) is None  # moving on gave the old lease back


def test_skip_passes_over_the_current_item_and_frees_it(database: Database, data_dir: Path) -> None:
    dataset_id = make_dataset(database, data_dir)
    ids = ids_of(database, dataset_id)
    scope = ItemFilter(dataset_id=dataset_id)
    assert claim_next(database, scope, curator="ana") == ids[0]
    assert claim_next(database, scope, curator="ana", skip=ids[0]) == ids[1]
    assert claim_next(database, scope, curator="ben") == ids[0]


def test_next_goes_on_from_the_curators_last_item_and_wraps_around(
    database: Database, data_dir: Path
) -> None:
    dataset_id = make_dataset(database, data_dir, count=4)
    ids = ids_of(database, dataset_id)
    scope = ItemFilter(dataset_id=dataset_id)
    assert claim_next(database, scope, curator="ben") == ids[0]
    assert claim_next(database, scope, curator="ana") == ids[1]
    release(database, dataset_id, curator="ben")  # ids[0] waits again, behind ana
    handed = []
    while (item_id := claim_next(database, scope, curator="ana")) is not None:
        handed.append(item_id)
        decide(database, item_id, "ana")
    assert handed == [ids[1], ids[2], ids[3], ids[0]]


def test_an_expired_lease_goes_to_the_next_curator(database: Database, data_dir: Path) -> None:
    dataset_id = make_dataset(database, data_dir)
    ids = ids_of(database, dataset_id)
    scope = ItemFilter(dataset_id=dataset_id)
    short = LeaseSettings(duration=timedelta(minutes=5))
    start = utcnow()
    assert claim_next(database, scope, curator="ana", settings=short, now=start) == ids[0]
    assert claim_next(database, scope, curator="ben", now=start + timedelta(minutes=4)) == ids[1]
    later = start + timedelta(minutes=6)
    assert lease_of(database, ids[0], now=later) is None
    assert claim_next(database, scope, curator="cleo", now=later) == ids[0]


def test_the_filter_narrows_what_next_hands_out(database: Database, data_dir: Path) -> None:
    with database.write() as session:
        dataset = add_dataset(session)
        image = add_image(session, data_dir)
        add_item(session, dataset, image, external_id="mc", answer="cat")
        blank = add_item(session, dataset, image, external_id="blank", answer="seven",
                         question_type=QuestionType.FILL_IN_BLANK)
        dataset_id, blank_id = dataset.id, blank.id
    scope = ItemFilter(dataset_id=dataset_id, question_types=(QuestionType.FILL_IN_BLANK,),
                       statuses=(ItemStatus.FAILED,))  # statuses give way to "needs review"
    assert claim_next(database, scope, curator="ana") == blank_id
    assert claim_next(database, scope, curator="ben") is None


def test_nothing_left_returns_none_and_releases_the_last_lease(database: Database, data_dir: Path) -> None:
    dataset_id = make_dataset(database, data_dir, count=1)
    scope = ItemFilter(dataset_id=dataset_id)
    only = claim_next(database, scope, curator="ana")
    decide(database, only, "ana")
    assert claim_next(database, scope, curator="ana") is None
    assert claim_next(database, scope, curator="ben") is None
    assert lease_of(database, only) is None


def test_double_review_hands_each_item_to_two_different_curators(database: Database, data_dir: Path) -> None:
    dataset_id = make_dataset(database, data_dir, count=3)
    ids = ids_of(database, dataset_id)
    set_reviews_required(database, dataset_id, 2)
    assert reviews_required(database, dataset_id) == 2
    scope = ItemFilter(dataset_id=dataset_id)
    first = claim_next(database, scope, curator="ana")
    decide(database, first, "ana")
    assert claim_next(database, scope, curator="ana") == ids[1]  # never the one ana decided
    assert claim_next(database, scope, curator="ben") == first  # still needs a second curator
    decide(database, first, "ben", accept=False)
    progress = team_progress(database, dataset_id)
    assert (progress.agreement.reviewable, progress.agreement.fully_reviewed) == (3, 1)
    assert (progress.agreement.double_reviewed, progress.agreement.agreeing) == (1, 0)
    by_name = {c.curator: c for c in progress.curators}
    assert (by_name["ana"].accepted, by_name["ana"].rejected) == (1, 0)
    assert (by_name["ben"].accepted, by_name["ben"].rejected) == (0, 1)
    assert by_name["ana"].leased_item == ids[1]
    assert claim_next(database, scope, curator="cleo") == ids[2]


def test_undone_decisions_and_later_edits_need_review_again(database: Database, data_dir: Path) -> None:
    dataset_id = make_dataset(database, data_dir, count=2)
    ids = ids_of(database, dataset_id)
    set_reviews_required(database, dataset_id, 2)
    scope = ItemFilter(dataset_id=dataset_id)
    decide(database, ids[0], "ana")
    decide(database, ids[0], "ben")
    assert team_progress(database, dataset_id).agreement.fully_reviewed == 1
    with database.write() as session:
        session.execute(update(ReviewEvent).where(ReviewEvent.item_id == ids[0],
                                                  ReviewEvent.curator == "ben")
                        .values(undone_by=999))
    assert team_progress(database, dataset_id).agreement.fully_reviewed == 0
    assert claim_next(database, scope, curator="ben") == ids[0]
    assert release(database, dataset_id, curator="ben") == 1
    with database.read() as session:
        version = session.get_one(Item, ids[0]).version
    review.edit(database, ids[0], curator="cleo", expected_version=version, answer="lion")
    progress = team_progress(database, dataset_id)
    assert (progress.agreement.fully_reviewed, progress.curators) == (0, ())
    assert claim_next(database, scope, curator="ana") == ids[0]  # ana must look again


def test_a_curator_who_changed_their_mind_counts_once(database: Database, data_dir: Path) -> None:
    dataset_id = make_dataset(database, data_dir, count=1)
    only = ids_of(database, dataset_id)[0]
    set_reviews_required(database, dataset_id, 2)
    decide(database, only, "ana")
    decide(database, only, "ana", accept=False)
    assert team_progress(database, dataset_id).agreement.fully_reviewed == 0
    assert claim_next(database, ItemFilter(dataset_id=dataset_id), curator="ben") == only
    assert claim_next(database, ItemFilter(dataset_id=dataset_id), curator="ana") is None


def test_reviews_required_is_checked(database: Database, data_dir: Path) -> None:
    dataset_id = make_dataset(database, data_dir, count=1)
    with pytest.raises(ValidationError, match="choose 1 to 5"):
        set_reviews_required(database, dataset_id, 0)
    with pytest.raises(ValidationError, match="curator name is empty"):
        claim_next(database, ItemFilter(dataset_id=dataset_id), curator="  ")
    assert release(database, dataset_id, curator="ana") == 0


def concurrent_team_review(database: Database, dataset_id: int, curators: int) -> Counter[int]:
    """Each curator claims and accepts until nothing is left; returns decisions per item."""
    scope = ItemFilter(dataset_id=dataset_id)
    start = threading.Barrier(curators)
    held: dict[int, str] = {}
    overlaps: list[tuple[int, str, str]] = []
    guard = threading.Lock()
    decided: Counter[int] = Counter()
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            start.wait(10)
            while (item_id := claim_next(database, scope, curator=name)) is not None:
                with guard:
                    if item_id in held and held[item_id] != name:
                        overlaps.append((item_id, held[item_id], name))
                    held[item_id] = name
                decide(database, item_id, name)
                with guard:
                    decided[item_id] += 1
                    held.pop(item_id, None)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"curator-{n}",)) for n in range(curators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert not overlaps, overlaps
    return decided


def test_concurrent_curators_never_get_the_same_item(database: Database, data_dir: Path) -> None:
    dataset_id = make_dataset(database, data_dir, count=40)
    decided = concurrent_team_review(database, dataset_id, curators=6)
    assert len(decided) == 40 and set(decided.values()) == {1}


@pytest.mark.postgres
def test_concurrent_curators_never_get_the_same_item_on_postgresql(
    postgres_database: Database, data_dir: Path
) -> None:
    dataset_id = make_dataset(postgres_database, data_dir, count=40)
    decided = concurrent_team_review(postgres_database, dataset_id, curators=6)
    assert len(decided) == 40 and set(decided.values()) == {1}


# ---------------------------------------------------------------- on the Review page

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def page_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import streamlit as st

    monkeypatch.setenv("VQA_EMBEDDED_WORKER", "0")
    monkeypatch.chdir(ROOT)
    yield data_dir
    st.cache_resource.clear()
    st.cache_data.clear()


def review_page(dataset_id: int, curator: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
    at.query_params.update({"dataset": str(dataset_id), "curator": curator})
    at.run()
    at.switch_page("pages/3_Review.py").run()
    assert not at.exception, at.exception
    at.session_state["team_open"] = True
    at.run()
    at.toggle(key="review_team").set_value(True).run()
    assert not at.exception, at.exception
    return at


def shown_item(at) -> int:
    return int(at.query_params["item"][0] if isinstance(at.query_params["item"], list)
               else at.query_params["item"])


def test_team_mode_on_the_review_page_hands_out_and_advances(
    page_env: Path, database: Database
) -> None:
    dataset_id = make_dataset(database, page_env, count=4)
    ids = ids_of(database, dataset_id)
    claim_next(database, ItemFilter(dataset_id=dataset_id), curator="ben")  # ben holds ids[0]
    at = review_page(dataset_id, "ana")
    assert shown_item(at) == ids[1]
    at.button(key="review_accept").click().run()
    assert not at.exception, at.exception
    assert shown_item(at) == ids[2]  # the next free item, not ben's
    at.button(key="review_next").click().run()
    assert shown_item(at) == ids[3]
    assert lease_of(database, ids[2]) is None  # skipping freed it
    at.query_params["item"] = str(ids[0])
    at.run()
    assert "ben is reviewing this item" in "\n".join(i.value for i in at.info)
    assert "1 of 4 item(s) reviewed by 1 curator(s)" in "\n".join(
        p.proto.text for p in at.get("progress")
    )
