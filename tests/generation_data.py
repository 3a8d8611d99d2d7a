"""Small datasets written straight into the database for generation tests.

Ingest has its own tests; these build Dataset, Image and Item rows directly (with real,
tiny JPEGs in the data dir) so generation tests stay fast and independent of it.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import select

from db.engine import Database
from db.models import Dataset, Generation, Image, Item, ItemStatus, QuestionType
from vqa_engine.images import image_paths_for


def tiny_jpeg(seed: int, size: int = 16) -> bytes:
    picture = PILImage.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, 128))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def seed_dataset(
    database: Database,
    data: Path,
    *,
    multiple_choice: int = 4,
    fill_in_blank: int = 0,
    name: str = "test-set",
    images: int | None = None,
    questions: list[str] | None = None,
) -> int:
    """A dataset of `multiple_choice` + `fill_in_blank` pending items; returns its id."""
    total = multiple_choice + fill_in_blank
    image_count = images or total
    with database.write() as session:
        dataset = Dataset(name=name, source_name=f"{name}.json")
        session.add(dataset)
        session.flush()
        stored: list[Image] = []
        for index in range(image_count):
            jpeg = tiny_jpeg(index + 1)
            sha = hashlib.sha256(jpeg + name.encode()).hexdigest()
            original, prepared = image_paths_for(sha, "jpg")
            for relative in (original, prepared):
                path = data / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpeg)
            existing = session.scalars(select(Image).where(Image.sha256 == sha)).first()
            image = existing or Image(
                sha256=sha, original_name=f"img{index}.jpg", original_path=original,
                prepared_path=prepared, format="JPEG", width=16, height=16,
                byte_size=len(jpeg), prepared_width=16, prepared_height=16,
                prepared_byte_size=len(jpeg), prepared_quality=80,
            )
            session.add(image)
            stored.append(image)
        session.flush()
        for index in range(total):
            kind = QuestionType.MULTIPLE_CHOICE if index < multiple_choice \
                else QuestionType.FILL_IN_BLANK
            question = questions[index] if questions else f"What is shown in picture {index}?"
            image = stored[index % len(stored)]
            session.add(Item(
                dataset_id=dataset.id, position=index, external_id=f"q{index}",
                question=question, question_type=kind, image_id=image.id,
                image_ref=image.original_name, extra={"source": "unit", "row": index},
                status=ItemStatus.PENDING,
            ))
        return dataset.id


def items_of(database: Database, dataset_id: int) -> list[Item]:
    with database.read() as session:
        return list(session.scalars(select(Item).where(Item.dataset_id == dataset_id)
                                    .order_by(Item.id)))


def generation(database: Database, generation_id: int) -> Generation:
    with database.read() as session:
        found = session.get(Generation, generation_id)
        assert found is not None
        return found
