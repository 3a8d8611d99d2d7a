"""Turn an uploaded image into the one JPEG every model request will send.

Preparation happens once, at ingest, so a generation run never decodes, rotates or
re-encodes anything: it reads a file that is already upright, RGB, at most 2048 px on its
longest side and small enough (as base64) for the endpoints we target. The original bytes
are kept beside it, content-addressed by their sha256, so the same picture is stored once.

Uploads are untrusted. The content decides the format (never the file name), only common
photo formats are opened, and the pixel count is checked before any pixel is decoded so a
small file that claims to be gigapixels cannot exhaust memory.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, ImageFile, UnidentifiedImageError

from vqa_engine.errors import InputError

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})

EXTENSIONS = {
    "JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif",
}

ORIGINAL_DIR = "images/original"
PREPARED_DIR = "images/prepared"

_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_MB = 1024 * 1024


@dataclass(frozen=True)
class ImageLimits:
    """What a prepared image must satisfy; the defaults suit the common vision endpoints."""

    max_side: int = 2048
    jpeg_quality_start: int = 85
    jpeg_quality_min: int = 50
    jpeg_quality_step: int = 5
    max_base64_bytes: int = 7 * _MB  # the ladder steps down until the base64 fits this
    hard_max_bytes: int = 10 * _MB  # base64 still above this at the lowest quality: refused
    max_pixels: int = 100_000_000  # decompression-bomb cap, checked before decoding
    allowed_formats: frozenset[str] = field(default=ALLOWED_FORMATS)


@dataclass(frozen=True)
class PreparedImage:
    """The model-ready JPEG and where it came from. Source size is as displayed (upright)."""

    jpeg: bytes = field(repr=False)
    width: int
    height: int
    quality: int
    source_format: str
    source_width: int
    source_height: int

    @property
    def base64_size(self) -> int:
        return base64_size(len(self.jpeg))

    @property
    def extension(self) -> str:
        """The file extension for the original bytes, from their content."""
        return EXTENSIONS[self.source_format]


def base64_size(byte_count: int) -> int:
    return 4 * ((byte_count + 2) // 3)


def _mb(byte_count: int) -> str:
    return f"{byte_count / _MB:.1f} MB"


def _identify(data: bytes) -> str | None:
    """The real format of bytes Pillow knows but we refuse, for a precise message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as probe:
                return probe.format
    except Exception:  # noqa: BLE001 - any failure just means "not an image we know"
        return None


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    allowed = ", ".join(sorted(limits.allowed_formats))
    if not data:
        raise InputError("the image file is empty (0 bytes); upload the picture again")
    try:
        image = Image.open(io.BytesIO(data), formats=sorted(limits.allowed_formats))
    except UnidentifiedImageError:
        actual = _identify(data)
        what = f"its content is {actual}" if actual else "its content is not a known image format"
        raise InputError(
            f"unsupported image format: {what}; allowed formats are {allowed} "
            "(the content decides, not the file name); convert it to JPEG or PNG"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(_bomb_message(exc, limits)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(
            f"corrupt or truncated image: its header cannot be read ({exc}); "
            "re-export or re-upload it"
        ) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InputError(f"corrupt image: it claims a size of {width}x{height} pixels")
    if width * height > limits.max_pixels:
        image.close()
        raise InputError(
            f"image too large: {width}x{height} = {width * height:,} pixels is above the limit "
            f"of {limits.max_pixels:,} (a possible decompression bomb); downscale it first"
        )
    return image


def _bomb_message(exc: Exception, limits: ImageLimits) -> str:
    claimed = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(claimed.group(1)):,} pixels" if claimed else "its pixel count"
    return (
        f"image too large: {size} is above the limit of {limits.max_pixels:,} "
        "(a possible decompression bomb); downscale it first"
    )


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not refuse the picture
        return 1


def _decode_reduced(image: Image.Image, max_side: int) -> Image.Image:
    """Decode the first frame at (about) the final size, as cheaply as the format allows."""
    target = _target_size(image.width, image.height, max_side)
    if target != image.size and image.format == "JPEG":
        image.draft(None, target)  # libjpeg decodes at 1/2, 1/4 or 1/8 scale directly
    image.load()
    if image.size == target:
        return image
    target = _target_size(image.width, image.height, max_side)
    return image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    # The same table as ImageOps.exif_transpose, applied after the cheap reduced decode
    # (which does not carry the EXIF block over to the resized picture).
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    return image if method is None else image.transpose(method)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float greyscale: map the value range onto 8 bits.
        low, high = image.getextrema()  # type: ignore[misc]
        span = (high - low) or 1
        image = image.point(lambda v: (v - low) * 255 / span).convert("L")
    elif image.mode in ("LA", "La", "PA") or (image.mode == "L" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def _encode(image: Image.Image, limits: ImageLimits) -> tuple[bytes, int]:
    quality = limits.jpeg_quality_start
    step = max(1, limits.jpeg_quality_step)
    while True:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        jpeg = buffer.getvalue()
        size = base64_size(len(jpeg))
        if size <= limits.max_base64_bytes:
            return jpeg, quality
        if quality <= limits.jpeg_quality_min:
            if size > limits.hard_max_bytes:
                raise InputError(
                    f"image still too large after preparation: {_mb(size)} as base64 at JPEG "
                    f"quality {quality} ({image.width}x{image.height}), above the "
                    f"{_mb(limits.hard_max_bytes)} limit; crop or simplify the picture"
                )
            return jpeg, quality
        quality = max(limits.jpeg_quality_min, quality - step)


def prepare_image(data: bytes, limits: ImageLimits = ImageLimits()) -> PreparedImage:
    """The model-ready JPEG for one uploaded image; `InputError` says why it cannot be made.

    EXIF orientation is applied, the picture converted to RGB (transparency flattened on
    white, CMYK converted), its longest side brought to at most `max_side`, then encoded at
    falling JPEG quality until its base64 form fits `max_base64_bytes`.
    """
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, limits)
        try:
            source_format = str(image.format)
            source_width, source_height = image.size
            try:
                reduced = _decode_reduced(image, limits.max_side)
                # Only after decoding: a PNG's EXIF may sit after its pixels, and reading it
                # first would decode them in a path that hides a broken stream.
                orientation = _orientation(image)
                upright = _rgb_upright(reduced, orientation)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise InputError(_bomb_message(exc, limits)) from None
            except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
                reason = str(exc) or type(exc).__name__
                raise InputError(
                    f"corrupt or truncated image: the pixels cannot be decoded ({reason}); "
                    "re-export or re-upload it"
                ) from None
            if orientation in _ROTATING_ORIENTATIONS:
                source_width, source_height = source_height, source_width
            jpeg, quality = _encode(upright, limits)
        finally:
            image.close()
    return PreparedImage(
        jpeg=jpeg,
        width=upright.width,
        height=upright.height,
        quality=quality,
        source_format=source_format,
        source_width=source_width,
        source_height=source_height,
    )


def _rgb_upright(image: Image.Image, orientation: int) -> Image.Image:
    return _to_rgb(_upright(image, orientation))


def image_paths_for(sha256: str, ext: str) -> tuple[str, str]:
    """Where an image's original and prepared files live, relative to the data dir."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a lower-case hex sha256: {sha256!r}")
    ext = ext.lower().lstrip(".")
    if not ext.isalnum():
        raise ValueError(f"not a file extension: {ext!r}")
    shard = sha256[:2]
    return (
        f"{ORIGINAL_DIR}/{shard}/{sha256}.{ext}",
        f"{PREPARED_DIR}/{shard}/{sha256}.jpg",
    )


def stored_path(data_dir: Path, relative: str) -> Path:
    """The absolute path of a stored file; refuses anything that would leave the data dir."""
    parts = PurePosixPath(relative.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or not parts.parts:
        raise InputError(
            f"stored path {relative!r} is not a relative path inside the data dir; "
            "the database row is damaged"
        )
    return Path(data_dir).joinpath(*parts.parts)


# Truncated files are errors, never silently grey-filled pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = ImageLimits().max_pixels
