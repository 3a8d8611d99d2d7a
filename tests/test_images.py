"""Image preparation: the model-ready JPEG is upright, RGB, bounded and small enough."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from vqa_engine.errors import InputError
from vqa_engine.images import (
    ImageLimits,
    base64_size,
    image_paths_for,
    prepare_image,
    stored_path,
)

RED = (230, 20, 20)
BLUE = (20, 40, 230)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decoded(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    image.load()
    return image


def noise(width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


def halves(
    width: int, height: int, left: tuple[int, int, int], right: tuple[int, int, int]
) -> Image.Image:
    image = Image.new("RGB", (width, height), left)
    image.paste(right, (width // 2, 0, width, height))
    return image


def close_to(pixel: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=False))


def with_orientation(image: Image.Image, orientation: int, **options: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), quality=90, **options)


def test_small_png_becomes_rgb_jpeg_of_same_size_at_starting_quality() -> None:
    prepared = prepare_image(encode(Image.new("RGB", (320, 200), RED), "PNG"))
    image = decoded(prepared.jpeg)
    assert (prepared.width, prepared.height) == (320, 200) == image.size
    assert image.mode == "RGB"
    assert prepared.quality == 85
    assert prepared.source_format == "PNG"
    assert prepared.extension == "png"
    assert close_to(image.getpixel((10, 10)), RED)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((3000, 1000), (2048, 683)), ((1000, 4000), (512, 2048)), ((2048, 1500), (2048, 1500))],
)
def test_longest_side_is_bounded_to_2048_keeping_the_aspect_ratio(
    size: tuple[int, int],
    expected: tuple[int, int],
) -> None:
    prepared = prepare_image(encode(Image.new("RGB", size, BLUE), "PNG"))
    assert (prepared.width, prepared.height) == expected
    assert decoded(prepared.jpeg).size == expected
    assert (prepared.source_width, prepared.source_height) == size


def test_large_jpeg_takes_the_reduced_decode_path_and_still_lands_on_2048() -> None:
    source = halves(4100, 3000, RED, BLUE)
    prepared = prepare_image(encode(source, "JPEG", quality=90))
    image = decoded(prepared.jpeg)
    assert image.size == (2048, 1499)
    assert close_to(image.getpixel((100, 700)), RED)
    assert close_to(image.getpixel((1900, 700)), BLUE)


def test_custom_max_side_is_honoured() -> None:
    prepared = prepare_image(encode(Image.new("RGB", (800, 600)), "PNG"), ImageLimits(max_side=400))
    assert (prepared.width, prepared.height) == (400, 300)


def _jpeg_sizes(image: Image.Image) -> dict[int, int]:
    return {q: base64_size(len(encode(image, "JPEG", quality=q))) for q in (85, 80, 50)}


def test_quality_ladder_steps_down_until_the_base64_fits() -> None:
    image = noise(700, 700)
    sizes = _jpeg_sizes(image)
    limit = (sizes[80] + sizes[85]) // 2  # 85 is too big, 80 fits
    prepared = prepare_image(encode(image, "PNG"), ImageLimits(max_base64_bytes=limit))
    assert prepared.quality == 80
    assert prepared.base64_size <= limit


def test_quality_ladder_stops_at_the_minimum_and_accepts_below_the_hard_limit() -> None:
    image = noise(700, 700)
    sizes = _jpeg_sizes(image)
    limits = ImageLimits(max_base64_bytes=sizes[50] // 2, hard_max_bytes=sizes[50] + 1)
    prepared = prepare_image(encode(image, "PNG"), limits)
    assert prepared.quality == 50
    assert prepared.base64_size > limits.max_base64_bytes


def test_image_still_above_the_hard_limit_at_minimum_quality_is_refused() -> None:
    image = noise(700, 700)
    sizes = _jpeg_sizes(image)
    limits = ImageLimits(max_base64_bytes=sizes[50] // 3, hard_max_bytes=sizes[50] // 2)
    with pytest.raises(InputError, match=r"still too large after preparation.*quality 50"):
        prepare_image(encode(image, "PNG"), limits)


def test_noisy_large_image_fits_the_default_7_mb_budget() -> None:
    prepared = prepare_image(encode(noise(2048, 2048), "BMP"))
    assert prepared.base64_size <= 7 * 1024 * 1024
    assert (prepared.width, prepared.height) == (2048, 2048)


def test_exif_orientation_6_turns_the_picture_upright() -> None:
    # Stored landscape, red left half; orientation 6 means "rotate 90 degrees clockwise".
    prepared = prepare_image(with_orientation(halves(300, 200, RED, BLUE), 6))
    image = decoded(prepared.jpeg)
    assert image.size == (200, 300)
    assert (prepared.source_width, prepared.source_height) == (200, 300)
    assert close_to(image.getpixel((100, 30)), RED)  # the left half is now on top
    assert close_to(image.getpixel((100, 270)), BLUE)


def test_exif_orientation_3_rotates_half_a_turn() -> None:
    image = decoded(prepare_image(with_orientation(halves(300, 200, RED, BLUE), 3)).jpeg)
    assert image.size == (300, 200)
    assert close_to(image.getpixel((30, 100)), BLUE)
    assert close_to(image.getpixel((270, 100)), RED)


def test_exif_orientation_is_applied_on_the_reduced_decode_path_too() -> None:
    prepared = prepare_image(with_orientation(halves(3000, 2000, RED, BLUE), 8))
    image = decoded(prepared.jpeg)
    # Orientation 8: rotate 90 degrees counter-clockwise, so the left half ends at the bottom.
    assert image.size == (1365, 2048)
    assert close_to(image.getpixel((600, 1900)), RED)
    assert close_to(image.getpixel((600, 100)), BLUE)


def test_cmyk_jpeg_is_converted_to_rgb_with_the_right_colour() -> None:
    cmyk = Image.new("CMYK", (200, 100), (0, 0, 255, 0))  # pure yellow ink
    prepared = prepare_image(encode(cmyk, "JPEG", quality=95))
    image = decoded(prepared.jpeg)
    assert image.mode == "RGB"
    assert prepared.source_format == "JPEG"
    assert close_to(image.getpixel((100, 50)), (255, 255, 0))


def test_transparency_is_flattened_on_white() -> None:
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    image.paste((230, 20, 20, 255), (0, 0, 100, 100))
    image.paste((0, 0, 0, 128), (100, 0, 200, 50))
    flat = decoded(prepare_image(encode(image, "PNG")).jpeg)
    assert close_to(flat.getpixel((50, 50)), RED)
    assert close_to(flat.getpixel((150, 80)), (255, 255, 255), tolerance=8)  # fully transparent
    assert close_to(flat.getpixel((150, 20)), (127, 127, 127), tolerance=12)  # half-covered


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_transparent_greyscale_and_palette_images_are_flattened_on_white(mode: str) -> None:
    if mode == "LA":
        image = Image.new("LA", (100, 100), (0, 0))
    else:
        image = Image.new("P", (100, 100), 0)
        image.putpalette([0, 0, 0] * 256)
        image.info["transparency"] = 0
    flat = decoded(prepare_image(encode(image, "PNG")).jpeg)
    assert close_to(flat.getpixel((50, 50)), (255, 255, 255), tolerance=8)


def test_16_bit_greyscale_png_is_scaled_to_8_bits() -> None:
    image = Image.new("I;16", (100, 100), 0)
    image.paste(65535, (50, 0, 100, 100))
    flat = decoded(prepare_image(encode(image, "PNG")).jpeg)
    assert close_to(flat.getpixel((20, 50)), (0, 0, 0), tolerance=10)
    assert close_to(flat.getpixel((80, 50)), (255, 255, 255), tolerance=10)


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [Image.new("RGB", (60, 40), RED), Image.new("RGB", (60, 40), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    image = decoded(prepare_image(data).jpeg)
    assert close_to(image.getpixel((30, 20)), RED)


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "TIFF"])
def test_every_allowed_format_is_prepared(fmt: str) -> None:
    prepared = prepare_image(encode(Image.new("RGB", (64, 48), BLUE), fmt))
    assert prepared.source_format == fmt
    assert decoded(prepared.jpeg).size == (64, 48)


def test_format_known_to_pillow_but_not_allowed_is_refused_by_name() -> None:
    ico = encode(Image.new("RGB", (32, 32)), "ICO")
    with pytest.raises(InputError, match=r"unsupported image format: its content is ICO"):
        prepare_image(ico)


def test_text_disguised_as_an_image_is_refused() -> None:
    with pytest.raises(InputError, match=r"unsupported image format.*not a known image format"):
        prepare_image(b"just text pretending to be a picture\n" * 3)


def test_text_behind_a_gif_signature_reads_as_a_huge_claim_and_is_refused() -> None:
    # The bytes after "GIF89a" happen to decode as a 1,969,946,804-pixel canvas.
    with pytest.raises(InputError, match=r"image too large: 1,969,946,804 pixels is above"):
        prepare_image(b"GIF89a? no, just text pretending to be a picture\n" * 3)


def test_format_outside_a_narrowed_allow_list_is_refused() -> None:
    with pytest.raises(InputError, match=r"its content is BMP; allowed formats are JPEG, PNG"):
        prepare_image(
            encode(Image.new("RGB", (8, 8)), "BMP"),
            ImageLimits(allowed_formats=frozenset({"JPEG", "PNG"})),
        )


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        prepare_image(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_refused_as_corrupt(fmt: str) -> None:
    data = encode(noise(300, 200), fmt)
    with pytest.raises(InputError, match=r"corrupt or truncated image"):
        prepare_image(data[: len(data) // 2])


def test_garbage_after_a_valid_header_is_refused_as_corrupt() -> None:
    data = bytearray(encode(noise(200, 200), "PNG"))
    data[200:400] = b"\xff" * 200
    with pytest.raises(InputError, match=r"corrupt or truncated image"):
        prepare_image(bytes(data))


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims huge dimensions: a decompression bomb's calling card."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(
        InputError, match=r"10,000,000,000 pixels is above the limit.*decompression bomb"
    ):
        prepare_image(png_header_claiming(100_000, 100_000))


def test_pixel_cap_is_configurable() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(InputError, match=r"above the limit of 5,000"):
        prepare_image(data, ImageLimits(max_pixels=5_000))
    assert prepare_image(data, ImageLimits(max_pixels=10_000)).width == 100


def test_image_paths_are_content_addressed_and_sharded() -> None:
    sha = "ab" + "0" * 62
    assert image_paths_for(sha, "PNG") == (
        f"images/original/ab/{sha}.png",
        f"images/prepared/ab/{sha}.jpg",
    )
    with pytest.raises(ValueError):
        image_paths_for("not-a-hash", "png")


def test_stored_path_stays_inside_the_data_dir(tmp_path: Path) -> None:
    assert (
        stored_path(tmp_path, "images/original/ab/x.png") == tmp_path / "images/original/ab/x.png"
    )
    for bad in ("../outside.png", "/etc/passwd", "images/../../x", ""):
        with pytest.raises(InputError, match="not a relative path inside the data dir"):
            stored_path(tmp_path, bad)
