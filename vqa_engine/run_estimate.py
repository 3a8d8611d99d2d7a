"""What a run will cost, before it starts: requests and image tokens.

A multiple-choice item takes two requests (answer, distractors) and a fill-in-blank item
one; every request carries the item's image. Model-based checks add, per multiple-choice
item, one request without the image (blind) and one with it per option (circular); the
option count is drawn per item, so the estimate takes the largest the run allows. Image
tokens follow the rule of the Qwen-VL family that most self-hosted endpoints serve (one
token per 28 x 28 pixel patch of the image as resized by the model, between a minimum and
a maximum); other models count differently, so the figure is labelled an estimate. The
request ledger can make a run cheaper than this (answers already paid for are reused),
never dearer, except for retries.

One grouped query per estimate: items of the selection counted by question type and
prepared image size, which stays a handful of rows whatever the dataset's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select

from db.engine import Database
from db.models import Image, Item, ItemStatus, QuestionType
from vqa_engine.generator import GenerationSettings
from vqa_engine.model_checks import NO_CHECKS, ModelChecks
from vqa_engine.runs import ItemSelection

REQUESTS_PER_ITEM = {QuestionType.MULTIPLE_CHOICE: 2, QuestionType.FILL_IN_BLANK: 1}
SELECTION_STATUSES: dict[ItemSelection, tuple[ItemStatus, ...]] = {
    ItemSelection.ALL: tuple(s for s in ItemStatus if s is not ItemStatus.GENERATING),
    ItemSelection.PENDING: (ItemStatus.PENDING,),
    ItemSelection.FAILED: (ItemStatus.FAILED,),
    ItemSelection.INCOMPLETE: (ItemStatus.PENDING, ItemStatus.FAILED),
}
_IN_CHUNK = 500


@dataclass(frozen=True)
class ImageTokenRule:
    """Qwen2-VL / Qwen2.5-VL defaults: 28 px patches, 4 to 16,384 tokens per image."""

    patch_px: int = 28
    min_tokens: int = 4
    max_tokens: int = 16_384

    def tokens(self, width: int, height: int) -> int:
        if width <= 0 or height <= 0:
            return 0
        rows = max(1, round(height / self.patch_px))
        cols = max(1, round(width / self.patch_px))
        count = rows * cols
        if count > self.max_tokens:
            scale = math.sqrt(self.max_tokens / count)
            count = max(1, math.floor(rows * scale)) * max(1, math.floor(cols * scale))
        return max(self.min_tokens, count)


@dataclass(frozen=True)
class RunEstimate:
    items: int
    multiple_choice: int
    fill_in_blank: int
    requests: int  # answer and distractor requests
    image_tokens: int  # of every request that carries the image, checks included
    blind_check_requests: int = 0  # text only
    circular_check_requests: int = 0  # with the image

    @property
    def check_requests(self) -> int:
        return self.blind_check_requests + self.circular_check_requests

    @property
    def total_requests(self) -> int:
        return self.requests + self.check_requests

    @property
    def image_tokens_per_request(self) -> float:
        with_image = self.requests + self.circular_check_requests
        return self.image_tokens / with_image if with_image else 0.0


def estimate_run(
    database: Database,
    dataset_id: int,
    selection: ItemSelection,
    item_ids: Sequence[int] | None = None,
    *,
    rule: ImageTokenRule = ImageTokenRule(),
    checks: ModelChecks = NO_CHECKS,
    max_options: int = GenerationSettings.distractors_max + 1,
) -> RunEstimate:
    """Requests and image tokens for the items `start_run` would select; `max_options` is
    the largest option count of an item (distractors_max + 1), which circular checks use."""
    base = (
        select(Item.question_type, Image.prepared_width, Image.prepared_height, func.count())
        .join(Image, Image.id == Item.image_id)
        .where(Item.dataset_id == dataset_id)
        .group_by(Item.question_type, Image.prepared_width, Image.prepared_height)
    )
    groups: list[tuple[QuestionType, int, int, int]] = []
    with database.read() as session:
        if selection is ItemSelection.IDS:
            wanted = list(dict.fromkeys(item_ids or ()))
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                groups.extend(tuple(row) for row in session.execute(base.where(Item.id.in_(chunk))))
        else:
            statement = base.where(Item.status.in_(SELECTION_STATUSES[selection]))
            groups.extend(tuple(row) for row in session.execute(statement))
    counts = {t: 0 for t in QuestionType}
    requests = tokens = 0
    circular = max_options if checks.circular else 0
    for question_type, width, height, count in groups:
        calls = REQUESTS_PER_ITEM[question_type]
        counts[question_type] += count
        requests += calls * count
        if question_type is QuestionType.MULTIPLE_CHOICE:
            calls += circular
        tokens += calls * count * rule.tokens(width, height)
    multiple_choice = counts[QuestionType.MULTIPLE_CHOICE]
    return RunEstimate(
        items=sum(counts.values()),
        multiple_choice=multiple_choice,
        fill_in_blank=counts[QuestionType.FILL_IN_BLANK],
        requests=requests,
        image_tokens=tokens,
        blind_check_requests=multiple_choice if checks.blind else 0,
        circular_check_requests=multiple_choice * circular,
    )
