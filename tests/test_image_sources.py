"""Finding uploaded images: name matching, and refusing hostile archives."""

from __future__ import annotations

import base64
import io
import os
import re
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from vqa_engine.errors import InputError
from vqa_engine.image_sources import (
    SourceLimits,
    close_archives,
    collect_images,
    decode_data_url,
    is_data_url,
    read_source,
)


def png(colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_zip(path: Path, entries: dict[str, bytes], *, symlinks: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = stat.S_IFLNK | 0o777 if name in symlinks else stat.S_IFREG | 0o644
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return path


@pytest.fixture(autouse=True)
def _close_archives() -> Iterator[None]:
    yield
    close_archives()


def test_folder_is_catalogued_recursively_and_matched_by_name_and_relative_path(
    tmp_path: Path,
) -> None:
    root = tmp_path / "upload"
    write(root / "cats" / "tom.png", png())
    write(root / "dogs" / "rex.png", png())
    catalog = collect_images([root])
    assert catalog.problems == []
    assert sorted(s.relative for s in catalog.sources) == ["cats/tom.png", "dogs/rex.png"]
    assert catalog.resolve("tom.png").relative == "cats/tom.png"
    assert catalog.resolve("dogs/rex.png").relative == "dogs/rex.png"
    assert catalog.resolve("./cats\\tom.png").relative == "cats/tom.png"
    assert catalog.resolve("upload/cats/tom.png").relative == "cats/tom.png"  # by file name


def test_file_name_differing_only_in_case_matches_when_unambiguous(tmp_path: Path) -> None:
    write(tmp_path / "imgs" / "Cat.JPG", png())
    write(tmp_path / "imgs" / "dog.png", png())
    write(tmp_path / "imgs" / "DOG.png", png())
    catalog = collect_images([tmp_path / "imgs"])
    assert catalog.resolve("cat.jpg").relative == "Cat.JPG"
    assert catalog.resolve("dog.png").relative == "dog.png"  # the exact name wins
    with pytest.raises(InputError, match="matches 2 uploaded files"):
        catalog.resolve("Dog.png")


def test_trailing_path_disambiguates_when_the_prefix_differs(tmp_path: Path) -> None:
    write(tmp_path / "set" / "batch1" / "a" / "x.png", png())
    write(tmp_path / "set" / "batch1" / "b" / "x.png", png())
    catalog = collect_images([tmp_path / "set"])
    assert catalog.resolve("a/x.png").relative == "batch1/a/x.png"


def test_a_name_matching_several_files_is_refused_not_guessed(tmp_path: Path) -> None:
    write(tmp_path / "one" / "x.png", png())
    write(tmp_path / "two" / "x.png", png((0, 0, 255)))
    catalog = collect_images([tmp_path / "one", tmp_path / "two"])
    with pytest.raises(InputError, match=r"image 'x.png' matches 2 uploaded files .*one/x.png"):
        catalog.resolve("x.png")


def test_missing_image_names_the_reference_and_suggests_a_close_name(tmp_path: Path) -> None:
    write(tmp_path / "imgs" / "apple.png", png())
    catalog = collect_images([tmp_path / "imgs"])
    with pytest.raises(
        InputError,
        match=r"image 'aple.png' not found among the 1 uploaded images; "
        r"did you mean 'apple.png'\?",
    ):
        catalog.resolve("aple.png")


def test_missing_image_with_no_uploads_says_so() -> None:
    with pytest.raises(InputError, match="no images were uploaded"):
        collect_images([]).resolve("a.png")


def test_single_files_are_matched_by_their_name(tmp_path: Path) -> None:
    image = write(tmp_path / "deep" / "pic.png", png())
    catalog = collect_images([image])
    assert catalog.resolve("pic.png").path == image
    assert read_source(catalog.resolve("pic.png")) == image.read_bytes()


def test_hidden_files_and_macos_archive_debris_are_ignored(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "a.zip",
        {
            "imgs/a.png": png(),
            "__MACOSX/imgs/._a.png": b"junk",
            "imgs/.DS_Store": b"junk",
        },
    )
    write(tmp_path / "folder" / ".hidden.png", png())
    write(tmp_path / "folder" / "._b.png", b"junk")
    catalog = collect_images([archive, tmp_path / "folder"])
    assert [s.relative for s in catalog.sources] == ["imgs/a.png"]


def test_zip_entries_are_matched_and_read(tmp_path: Path) -> None:
    data = png()
    archive = make_zip(
        tmp_path / "up.zip", {"images/a.png": data, "images/sub/b.png": png((1, 2, 3))}
    )
    catalog = collect_images([archive])
    source = catalog.resolve("a.png")
    assert source.member == "images/a.png"
    assert source.label == "up.zip:images/a.png"
    assert read_source(source) == data
    assert catalog.resolve("sub/b.png").member == "images/sub/b.png"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("../evil.png", r"its path leaves the archive \('..'\)"),
        ("images/../../evil.png", r"its path leaves the archive"),
        ("/etc/evil.png", "it has an absolute path"),
        ("C:/evil.png", "it has an absolute path"),
        ("..\\evil.png", r"its path leaves the archive"),
    ],
)
def test_zip_entries_escaping_the_archive_are_refused(
    tmp_path: Path, entry: str, reason: str
) -> None:
    archive = make_zip(tmp_path / "bad.zip", {"ok.png": png(), entry: png()})
    catalog = collect_images([archive])
    assert len(catalog.problems) == 1
    problem = catalog.problems[0]
    assert problem.file == str(archive)
    assert f"zip entry '{entry}' refused" in problem.reason
    assert re.search(reason, problem.reason)


def test_zip_symlink_entries_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "link.zip", {"a.png": b"/etc/passwd"}, symlinks=("a.png",))
    catalog = collect_images([archive])
    assert "zip entry 'a.png' refused: it is a symbolic link" in catalog.problems[0].reason
    assert catalog.sources == []


def test_zip_bomb_is_stopped_while_extracting_not_trusted_from_headers(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"bomb.png": b"\0" * (3 * 1024 * 1024)})
    assert archive.stat().st_size < 20_000
    source = collect_images([archive]).resolve("bomb.png")
    with pytest.raises(
        InputError,
        match=r"bomb.zip:bomb.png is larger than the 1 MB per-image "
        r"limit, counted while reading \(the archive claims "
        r"3,145,728 bytes\); a possible zip bomb",
    ):
        read_source(source, SourceLimits(max_file_bytes=1024 * 1024))


def test_oversized_plain_file_is_refused(tmp_path: Path) -> None:
    big = write(tmp_path / "big.png", os.urandom(2 * 1024 * 1024 + 10))
    with pytest.raises(InputError, match=r"big.png is larger than the 2 MB per-image limit"):
        read_source(
            collect_images([big]).resolve("big.png"), SourceLimits(max_file_bytes=2 * 1024 * 1024)
        )


def test_damaged_zip_entry_is_reported_as_damaged(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "d.zip", {"a.png": os.urandom(4000)})
    raw = bytearray(archive.read_bytes())
    raw[100:140] = b"\0" * 40  # inside the compressed data of the only entry
    archive.write_bytes(bytes(raw))
    source = collect_images([archive]).resolve("a.png")
    with pytest.raises(InputError, match=r"d.zip:a.png cannot be extracted .*damaged"):
        read_source(source)


def test_file_named_zip_that_is_not_a_zip_is_a_problem(tmp_path: Path) -> None:
    fake = write(tmp_path / "fake.zip", b"not a zip at all")
    catalog = collect_images([fake])
    assert "not a readable zip archive" in catalog.problems[0].reason


def test_too_many_zip_entries_is_a_problem(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"{i}.png": b"x" for i in range(5)})
    catalog = collect_images([archive], SourceLimits(max_zip_entries=4))
    assert "5 entries, above the limit of 4" in catalog.problems[0].reason


def test_missing_upload_path_is_a_problem(tmp_path: Path) -> None:
    catalog = collect_images([tmp_path / "nowhere"])
    assert catalog.problems[0].reason.startswith("no such file or folder")


def test_symlinks_inside_a_folder_are_never_followed(tmp_path: Path) -> None:
    outside = write(tmp_path / "secret.png", png())
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "link.png").symlink_to(outside)
    catalog = collect_images([folder])
    assert catalog.sources == []
    with pytest.raises(InputError, match=r"image 'link.png' is refused: .* symbolic link"):
        catalog.resolve("link.png")


def test_data_urls_are_decoded_in_base64_and_percent_forms() -> None:
    data = png()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert is_data_url(url) and is_data_url("  DATA:image/png,x") and not is_data_url("a.png")
    assert decode_data_url(url) == data
    assert decode_data_url(url.rstrip("=")) == data  # missing padding is forgiven
    assert decode_data_url("data:text/plain,%41%42C") == b"ABC"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/png;base64", "has no ','"),
        ("data:image/png;base64,@@@@", "not valid base64"),
        ("data:image/png;base64,", "holds no data"),
    ],
)
def test_bad_data_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_data_url(url)


def test_oversized_data_url_is_refused_before_decoding() -> None:
    url = "data:image/png;base64," + "A" * 4_000_000
    with pytest.raises(InputError, match=r"about 2.9 MB, above the 1 MB per-image limit"):
        decode_data_url(url, SourceLimits(max_file_bytes=1024 * 1024))
