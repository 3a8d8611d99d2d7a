"""Build the demo dataset in `examples/demo/` from nothing but Pillow drawing calls.

The demo doubles as a test fixture, so it covers the edge cases an ingest must handle: a
PNG with transparency, a JPEG whose EXIF orientation turns it upright, a CMYK JPEG, an
image used by two questions, an image referenced by its relative path, an inline `data:`
URL, questions in English and Chinese, both question types, and a counting question whose
answer is a single digit. The same questions are written as JSON, JSONL and CSV, and the
images both as a folder and as a zip. Output is byte-for-byte deterministic.

    python examples/make_examples.py [OUTPUT_DIR]
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import sys
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

DEMO_DIR = Path(__file__).resolve().parent / "demo"
SIZE = (480, 360)
WHITE = (255, 255, 255)
_FIXED_DATE = (2024, 1, 1, 0, 0, 0)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def shapes() -> Image.Image:
    image = Image.new("RGB", SIZE, WHITE)
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 110, 150, 230), fill=(220, 30, 30))
    draw.rectangle((180, 110, 300, 230), fill=(30, 60, 220))
    draw.polygon([(390, 105), (330, 235), (450, 235)], fill=(30, 160, 60))
    return image


def apples(count: int = 5) -> Image.Image:
    image = Image.new("RGB", SIZE, (245, 235, 215))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 260, SIZE[0], SIZE[1]), fill=(150, 100, 60))
    for i in range(count):
        x = 40 + i * 85
        draw.ellipse((x, 190, x + 70, 260), fill=(200, 20, 30))
        draw.line((x + 35, 190, x + 40, 170), fill=(90, 60, 20), width=5)
        draw.ellipse((x + 40, 168, x + 58, 180), fill=(40, 150, 40))
    return image


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float,
          fill: tuple[int, ...]) -> None:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.4
        angle = math.pi / 2 + i * math.pi / 5
        points.append((cx + r * math.cos(angle), cy - r * math.sin(angle)))
    draw.polygon(points, fill=fill)


def stars(count: int = 7) -> Image.Image:
    image = Image.new("RGB", SIZE, (15, 20, 60))
    draw = ImageDraw.Draw(image)
    centres = [(70, 80), (200, 60), (330, 90), (420, 190), (110, 220), (250, 200), (370, 300)]
    for cx, cy in centres[:count]:
        _star(draw, cx, cy, 34, (250, 220, 40))
    return image


def sign() -> Image.Image:
    image = Image.new("RGB", SIZE, (250, 230, 60))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, SIZE[0] - 20, SIZE[1] - 20), outline=(20, 20, 20), width=8)
    centre = (SIZE[0] // 2, SIZE[1] // 2)
    draw.text(centre, "OPEN", fill=(20, 90, 200), font=_font(110), anchor="mm")
    return image


def chart() -> Image.Image:
    image = Image.new("RGB", SIZE, WHITE)
    draw = ImageDraw.Draw(image)
    font = _font(22)
    base = 300
    draw.line((40, base, 460, base), fill=(0, 0, 0), width=3)
    draw.line((40, 30, 40, base), fill=(0, 0, 0), width=3)
    bars = [("Mon", 120, (70, 130, 180)), ("Tue", 200, (70, 130, 180)),
            ("Wed", 250, (230, 120, 30)), ("Thu", 90, (70, 130, 180))]
    for i, (label, height, colour) in enumerate(bars):
        x = 70 + i * 100
        draw.rectangle((x, base - height, x + 60, base), fill=colour)
        draw.text((x + 30, base + 20), label, fill=(0, 0, 0), font=font, anchor="mm")
    return image


def star_with_alpha() -> Image.Image:
    image = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    _star(draw, 240, 190, 160, (130, 40, 170, 255))
    return image


def arrow_stored_pointing_up() -> Image.Image:
    image = Image.new("RGB", SIZE, WHITE)
    draw = ImageDraw.Draw(image)
    draw.rectangle((220, 150, 260, 320), fill=(20, 20, 20))
    draw.polygon([(240, 40), (160, 160), (320, 160)], fill=(20, 20, 20))
    return image


def traffic_light() -> Image.Image:
    image = Image.new("RGB", SIZE, (190, 220, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((190, 30, 290, 330), fill=(40, 40, 40))
    for i, colour in enumerate([(90, 20, 20), (90, 80, 10), (40, 230, 60)]):
        y = 50 + i * 95
        draw.ellipse((205, y, 275, y + 70), fill=colour)
    return image


def cmyk_stripes() -> Image.Image:
    image = Image.new("CMYK", SIZE, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate([(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0)]):
        draw.rectangle((0, i * 120, SIZE[0], (i + 1) * 120), fill=colour)
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _jpeg(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, **options)
    return buffer.getvalue()


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def build_images() -> dict[str, bytes]:
    return {
        "shapes.png": _png(shapes()),
        "apples.jpg": _jpeg(apples()),
        "stars.png": _png(stars()),
        "sign.png": _png(sign()),
        "chart.png": _png(chart()),
        "star_alpha.png": _png(star_with_alpha()),
        # Stored pointing up; orientation 6 means "rotate 90 degrees clockwise to view".
        "arrow_exif.jpg": _jpeg(arrow_stored_pointing_up(), exif=_exif_orientation(6)),
        "stripes_cmyk.jpg": _jpeg(cmyk_stripes()),
        "traffic_light.png": _png(traffic_light()),
    }


def _red_square_data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(
        _png(Image.new("RGB", (16, 16), (230, 20, 20)))
    ).decode("ascii")


MC, FIB = "multiple_choice", "fill_in_blank"


def build_questions() -> list[dict[str, Any]]:
    rows = [
        ("q01", "Which shape in the image is red?", MC, "shapes.png", "shapes", "en", "circle"),
        ("q02", "图中蓝色的图形是什么形状？", FIB, "shapes.png", "shapes", "zh", "正方形"),
        ("q03", "How many apples are on the table? Answer with a single digit.", FIB,
         "apples.jpg", "counting", "en", "5"),
        ("q04", "图中有几颗星星？请只回答一个数字。", FIB, "stars.png", "counting", "zh", "7"),
        ("q05", "What word is written on the sign?", MC, "sign.png", "text", "en", "OPEN"),
        ("q06", "Which day has the tallest bar in the chart?", MC, "chart.png", "chart", "en",
         "Wed"),
        ("q07", "柱状图中一共有几根柱子？", FIB, "images/chart.png", "chart", "zh", "4"),
        ("q08", "图中的星形是什么颜色？", MC, "star_alpha.png", "colour", "zh", "紫色"),
        ("q09", "Which direction does the arrow point?", MC, "arrow_exif.jpg", "orientation",
         "en", "right"),
        ("q10", "How many coloured stripes are there?", FIB, "stripes_cmyk.jpg", "counting",
         "en", "3"),
        ("q11", "这个方块是什么颜色？", MC, _red_square_data_url(), "colour", "zh", "红色"),
        ("q12", "Which light of the traffic light is on?", MC, "traffic_light.png", "scene",
         "en", "green"),
    ]
    return [
        {"id": qid, "question": question, "question_type": qtype, "image": image,
         "category": category, "language": language, "reference_answer": answer}
        for qid, question, qtype, image, category, language, answer in rows
    ]


def _zip(images: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(images.items()):
            info = zipfile.ZipInfo(f"images/{name}", date_time=_FIXED_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_demo(target: Path = DEMO_DIR) -> dict[str, Path]:
    """Write the demo dataset; returns the path of each file written."""
    images = build_images()
    questions = build_questions()
    (target / "images").mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def write(relative: str, data: bytes) -> None:
        path = target / relative
        path.write_bytes(data)
        written[relative] = path

    for name, data in images.items():
        write(f"images/{name}", data)
    write("images.zip", _zip(images))
    write("questions.json", (json.dumps(questions, ensure_ascii=False, indent=2) + "\n").encode())
    write("questions.jsonl", "".join(
        json.dumps(row, ensure_ascii=False) + "\n" for row in questions
    ).encode())
    write("questions.csv", _csv(questions).encode("utf-8"))
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO_DIR
    files = write_demo(out)
    total = sum(path.stat().st_size for path in files.values())
    print(f"wrote {len(files)} files ({total / 1024:.0f} KB) to {out}")
