"""Rows for review, query and export tests, written straight into a real database.

Images are real tiny JPEGs under the temporary data dir, so exports that embed images
read actual files.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy.orm import Session


from db.models import (
    Dataset,
    Generation,
    GenerationSource,
    Image,
    Item,
    ItemStatus,
    QuestionType,
    Run,
)
from vqa_engine.records import compose_full_question

def jpeg_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (size, size), color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def add_image(session: Session, data_dir: Path, name: str = "cat.jpg",
              color: tuple[int, int, int] = (200, 30, 30)) -> Image:
    content = jpeg_bytes(color)
    sha = hashlib.sha256(content).hexdigest()
    relative = f"images/original/{sha}.jpg"
    path = data_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    image = Image(
        sha256=sha, original_name=name, original_path=relative,
        prepared_path=f"images/prepared/{sha}.jpg", format="JPEG", width=8, height=8,
        byte_size=len(content), prepared_width=8, prepared_height=8,
        prepared_byte_size=len(content), prepared_quality=85,
    )
    session.add(image)
    session.flush()
    return image


def add_dataset(session: Session, name: str = "animals") -> Dataset:
    dataset = Dataset(name=name, default_question_type=QuestionType.MULTIPLE_CHOICE)
    session.add(dataset)
    session.flush()
    return dataset


def add_run(session: Session, dataset: Dataset, **fields: Any) -> Run:
    run = Run(dataset_id=dataset.id, **fields)
    session.add(run)
    session.flush()
    return run


def add_item(
    session: Session,
    dataset: Dataset,
    image: Image,
    *,
    external_id: str,
    question: str = "What animal is shown?",
    question_type: QuestionType = QuestionType.MULTIPLE_CHOICE,
    status: ItemStatus = ItemStatus.GENERATED,
    answer: str | None = "cat",
    options: dict[str, str] | None = None,
    correct_letter: str | None = None,
    explanation: str | None = "It has whiskers.",
    extra: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    run: Run | None = None,
    model: str | None = "qwen2.5-vl-7b-instruct",
    position: int | None = None,
) -> Item:
    """An item; with a current model generation unless the status is pending/generating."""
    item = Item(
        dataset_id=dataset.id, position=position if position is not None else 0,
        external_id=external_id, question=question, question_type=question_type,
        image_id=image.id, image_ref=image.original_name, extra=extra or {}, status=status,
        run_id=run.id if run else None,
    )
    session.add(item)
    session.flush()
    if status in (ItemStatus.PENDING, ItemStatus.GENERATING):
        return item
    if status is ItemStatus.FAILED:
        generation = Generation(item_id=item.id, ok=False, error_type="timeout",
                                error_step="answer", error_message="timed out after 60 s",
                                model=model, run_id=run.id if run else None)
    else:
        if question_type is QuestionType.MULTIPLE_CHOICE:
            options = options or {"A": "dog", "B": answer or "", "C": "horse"}
            correct_letter = correct_letter or next(k for k, v in options.items() if v == answer)
            distractors = [v for k, v in options.items() if k != correct_letter]
            full_question = compose_full_question(question, options)
        else:
            options, correct_letter, distractors, full_question = {}, None, [], question
        generation = Generation(
            item_id=item.id, source=GenerationSource.MODEL, ok=True, answer=answer,
            explanation=explanation, distractors=distractors, options=options,
            correct_letter=correct_letter, shuffle_seed=7, full_question=full_question,
            model=model, prompt_version="v1", quality_flags=flags or {},
            run_id=run.id if run else None,
        )
    session.add(generation)
    session.flush()
    item.current_generation_id = generation.id
    session.flush()
    return item
