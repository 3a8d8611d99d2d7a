"""Find the uploaded image each question names, without trusting the upload.

Images arrive as single files, folders or zip archives, or inline as `data:` URLs. A question's
`image` field is matched against the relative path inside a folder or archive first, then
against the trailing part of such a path, then against the bare file name (exactly, then
ignoring case), and a name that fits several different files is refused rather than guessed.

Archives are hostile until proven otherwise: entries that would land outside the archive
(`..`, absolute paths, drive letters) or that are symbolic links are refused, and bytes are
counted while they are decompressed, because a zip's own size claims are just more input
(a 51 KB archive can expand to 50 MB). Nothing is read here until an image is needed, so
cataloguing a large upload costs only its directory listing.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import stat
import urllib.parse
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vqa_engine.errors import InputError, Problem

_MB = 1024 * 1024
_CHUNK = 1024 * 1024
_IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class SourceLimits:
    """Byte caps for one upload; counted on the bytes actually read, never on claims."""

    max_file_bytes: int = 50 * _MB  # one image, after decompression
    max_upload_bytes: int = 4 * 1024 * _MB  # all images of one ingest, after decompression
    max_zip_entries: int = 200_000


@dataclass(frozen=True)
class ImageSource:
    """One uploaded image: a file on disk, or an entry of a zip archive on disk."""

    path: Path
    relative: str  # posix path inside its folder or archive; the file name for a single file
    member: str | None = None  # the zip entry name, as stored
    display: str | None = None  # overrides `label`, e.g. for an inline data: URL

    @property
    def name(self) -> str:
        return PurePosixPath(self.relative).name

    @property
    def label(self) -> str:
        """How messages name this image."""
        if self.display is not None:
            return self.display
        if self.member is not None:
            return f"{self.path.name}:{self.member}"
        return str(self.path)


@dataclass
class ImageCatalog:
    """Every image the uploads offer, indexed for `resolve`, plus what was refused outright."""

    sources: list[ImageSource] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # relative path -> why it is refused
    _by_relative: dict[str, list[ImageSource]] = field(default_factory=dict, repr=False)
    _by_name: dict[str, list[ImageSource]] = field(default_factory=dict, repr=False)

    def add(self, source: ImageSource) -> None:
        self.sources.append(source)
        self._by_relative.setdefault(source.relative, []).append(source)
        self._by_name.setdefault(source.name, []).append(source)

    def resolve(self, ref: str) -> ImageSource:
        """The one image `ref` names; `InputError` says why there is none or several."""
        wanted = _normalise(ref)
        if not wanted:
            raise InputError("the image field is empty; give a file name, a path or a data: URL")
        candidates = self._by_relative.get(wanted, [])
        if not candidates:
            suffix = "/" + wanted
            candidates = [s for s in self.sources if s.relative.endswith(suffix)]
        if not candidates:
            candidates = self._by_name.get(PurePosixPath(wanted).name, [])
        if not candidates:  # files made on a case-insensitive disk: Cat.JPG for cat.jpg
            folded = PurePosixPath(wanted).name.casefold()
            candidates = [s for s in self.sources if s.name.casefold() == folded]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            shown = ", ".join(c.label for c in candidates[:5])
            raise InputError(
                f"image '{ref}' matches {len(candidates)} uploaded files ({shown}); "
                "give its relative path inside the folder or zip, or upload only one of them"
            )
        for relative, reason in self.refused.items():
            if relative == wanted or PurePosixPath(relative).name == PurePosixPath(wanted).name:
                raise InputError(f"image '{ref}' is refused: {reason}")
        if not self.sources:
            raise InputError(
                f"image '{ref}' not found: no images were uploaded; "
                "add the image files, a folder or a zip"
            )
        hint = difflib.get_close_matches(
            PurePosixPath(wanted).name, list(self._by_name), n=1, cutoff=0.6
        )
        did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
        raise InputError(
            f"image '{ref}' not found among the {len(self.sources)} uploaded images"
            f"{did_you_mean} (names are matched by relative path, then by file name)"
        )


def _normalise(ref: str) -> str:
    text = ref.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def _ignored(relative: str) -> bool:
    parts = PurePosixPath(relative).parts
    if parts and parts[0] == "__MACOSX":
        return True
    name = parts[-1] if parts else ""
    return name in _IGNORED_NAMES or name.startswith("._")


def _unsafe_entry_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "it is a symbolic link, which is never followed"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "it has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "its path leaves the archive ('..')"
    return None


def _catalog_zip(path: Path, catalog: ImageCatalog, limits: SourceLimits) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        catalog.problems.append(Problem(
            str(path), None, None,
            f"not a readable zip archive ({exc}); re-create it or upload the images directly",
        ))
        return
    if len(infos) > limits.max_zip_entries:
        catalog.problems.append(Problem(
            str(path), None, None,
            f"the archive has {len(infos):,} entries, above the limit of "
            f"{limits.max_zip_entries:,}; split it into several archives",
        ))
        return
    for info in infos:
        reason = _unsafe_entry_reason(info)
        if reason is not None:
            catalog.problems.append(Problem(
                str(path), None, None,
                f"zip entry '{info.filename}' refused: {reason}; "
                "re-create the archive from a folder of plain files",
            ))
            continue
        if info.is_dir():
            continue
        relative = _normalise(info.filename)
        if _ignored(relative):
            continue
        catalog.add(ImageSource(path=path, relative=relative, member=info.filename))


def _catalog_folder(root: Path, catalog: ImageCatalog) -> None:
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in sorted(files):
            full = Path(directory) / name
            relative = full.relative_to(root).as_posix()
            if _ignored(relative) or name.startswith("."):
                continue
            if full.is_symlink():
                catalog.refused[relative] = (
                    f"{full} is a symbolic link, which is never followed; copy the file itself"
                )
                continue
            catalog.add(ImageSource(path=full, relative=relative))


def collect_images(
    paths: Iterable[Path | str], limits: SourceLimits = SourceLimits(),
) -> ImageCatalog:
    """Catalogue image files, folders (recursively) and zip archives; nothing is read yet."""
    catalog = ImageCatalog()
    for given in paths:
        path = Path(given)
        if not path.exists():
            catalog.problems.append(Problem(
                str(path), None, None, "no such file or folder; check the --images path",
            ))
        elif path.is_dir():
            _catalog_folder(path, catalog)
        elif path.suffix.lower() == ".zip":
            _catalog_zip(path, catalog, limits)
        elif path.is_file():
            catalog.add(ImageSource(path=path, relative=path.name))
        else:
            catalog.problems.append(Problem(
                str(path), None, None, "not a regular file, folder or zip archive",
            ))
    return catalog


_ARCHIVES_KEPT_OPEN = 4
_open_archives: dict[str, zipfile.ZipFile] = {}


def _open_archive(path: str) -> zipfile.ZipFile:
    # Kept open between reads: re-parsing a large central directory per image is costly.
    archive = _open_archives.pop(path, None)
    if archive is None:
        archive = zipfile.ZipFile(path)
        while len(_open_archives) >= _ARCHIVES_KEPT_OPEN:
            _open_archives.pop(next(iter(_open_archives))).close()
    _open_archives[path] = archive
    return archive


def close_archives() -> None:
    """Close the archives `read_source` keeps open between reads."""
    while _open_archives:
        _open_archives.popitem()[1].close()


def format_size(byte_count: int) -> str:
    """Bytes for a message: '512 KB', '50 MB', '4.0 GB'."""
    if byte_count >= 1024 * _MB:
        return f"{byte_count / (1024 * _MB):.1f} GB"
    if byte_count >= _MB:
        digits = 0 if byte_count % _MB == 0 else 1
        return f"{byte_count / _MB:.{digits}f} MB"
    return f"{byte_count / 1024:.0f} KB"


def _too_big(label: str, limit: int, claimed: int | None = None) -> InputError:
    claim = f" (the archive claims {claimed:,} bytes)" if claimed is not None else ""
    return InputError(
        f"{label} is larger than the {format_size(limit)} per-image limit, counted while "
        f"reading{claim}; a possible zip bomb or an oversized file: shrink it or raise the limit"
    )


def read_source(source: ImageSource, limits: SourceLimits = SourceLimits()) -> bytes:
    """The bytes of one image, read with the per-image cap enforced as they arrive."""
    cap = limits.max_file_bytes
    chunks: list[bytes] = []
    total = 0
    try:
        if source.member is None:
            stream = open(source.path, "rb")  # noqa: SIM115 - closed below
            claimed = None
        else:
            archive = _open_archive(str(source.path))
            info = archive.getinfo(source.member)
            if info.flag_bits & 0x1:
                raise InputError(
                    f"{source.label} is encrypted; re-create the archive without a password"
                )
            stream = archive.open(info)
            claimed = info.file_size
        with stream:
            while True:
                chunk = stream.read(min(_CHUNK, cap + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    raise _too_big(source.label, cap, claimed)
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, NotImplementedError) as exc:
        raise InputError(
            f"{source.label} cannot be extracted ({exc}); the archive is damaged, re-create it"
        ) from None
    except OSError as exc:
        raise InputError(f"{source.label} cannot be read ({exc.strerror or exc})") from None
    return b"".join(chunks)


def is_data_url(ref: str) -> bool:
    return ref.lstrip()[:5].lower() == "data:"


def decode_data_url(ref: str, limits: SourceLimits = SourceLimits()) -> bytes:
    """The bytes of a `data:[<type>][;base64],<data>` URL, size-capped before decoding."""
    text = ref.strip()
    header, comma, payload = text.partition(",")
    if not comma:
        raise InputError(
            "the data: URL has no ',' before its data; expected data:image/png;base64,..."
        )
    is_base64 = header.lower().endswith(";base64")
    cap = limits.max_file_bytes
    estimated = len(payload) * 3 // 4 if is_base64 else len(payload) // 3
    if estimated > cap:
        raise InputError(
            f"the data: URL holds about {format_size(estimated)}, above the "
            f"{format_size(cap)} per-image limit; upload the image as a file instead"
        )
    if is_base64:
        compact = "".join(payload.split())
        compact += "=" * (-len(compact) % 4)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"the data: URL is not valid base64 ({exc})") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > cap:
        raise InputError(
            f"the data: URL holds {format_size(len(data))}, above the {format_size(cap)} "
            "per-image limit; upload the image as a file instead"
        )
    if not data:
        raise InputError("the data: URL holds no data")
    return data
