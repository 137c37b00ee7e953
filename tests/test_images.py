"""The pictures in images/ exist, are real images, and match their sources.

No Graphviz or Chromium is needed here: `make images` records the SHA-256 of
each source in what it draws from it (an XML comment in an SVG, a tEXt chunk in
a PNG), and these tests recompute the hash.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import pytest

IMAGES = Path(__file__).parent.parent / "images"

# Every picture the README shows, and where it comes from: a Graphviz source
# beside it (`make images`), or None for the screenshot (`make screenshot`).
PICTURES = {
    "scheme.svg": "scheme.dot",
    "scheme.png": "scheme.dot",
    "lifecycle.svg": "lifecycle.dot",
    "browser.png": None,
    "status.png": None,
}
GENERATED = {name: source for name, source in PICTURES.items() if source is not None}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARK = "source sha256"


def png_text_chunks(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG, keyword -> text."""
    chunks: dict[str, str] = {}
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"tEXt":
            keyword, _, text = body.partition(b"\0")
            chunks[keyword.decode("latin-1")] = text.decode("latin-1")
        if kind == b"IEND":
            break
        offset += 12 + length  # length, type, data, CRC
    return chunks


def recorded_hash(picture: Path) -> str | None:
    """The source hash `make images` wrote into a picture, or None."""
    data = picture.read_bytes()
    if picture.suffix == ".png":
        return png_text_chunks(data).get(MARK)
    match = re.search(rb"<!-- source sha256: ([0-9a-f]{64})", data)
    return match.group(1).decode() if match else None


@pytest.mark.parametrize("name", PICTURES)
def test_picture_is_a_real_image(name: str) -> None:
    picture = IMAGES / name
    assert picture.is_file(), f"images/{name} is missing (see images/README.md)"
    data = picture.read_bytes()
    assert len(data) > 1024, f"images/{name} is only {len(data)} bytes"
    if picture.suffix == ".png":
        assert data.startswith(PNG_SIGNATURE), f"images/{name} is not a PNG"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 400 and height >= 200, f"images/{name} is {width}x{height}"
    else:
        head = data[:2000].decode("utf-8", "replace")
        assert head.startswith("<?xml") and "<svg" in head, f"images/{name} is not an SVG"


@pytest.mark.parametrize("name", GENERATED)
def test_picture_has_its_source_beside_it(name: str) -> None:
    source = IMAGES / GENERATED[name]
    assert source.is_file(), f"images/{name} is drawn from images/{source.name}, which is missing"
    assert source.read_text().lstrip().startswith("//"), (
        f"images/{source.name} should open with a comment saying what it draws"
    )


@pytest.mark.parametrize("name", GENERATED)
def test_picture_was_drawn_from_the_current_source(name: str) -> None:
    source = IMAGES / GENERATED[name]
    recorded = recorded_hash(IMAGES / name)
    assert recorded is not None, f"images/{name} was not drawn by `make images`: run make images"
    current = hashlib.sha256(source.read_bytes()).hexdigest()
    assert recorded == current, (
        f"images/{source.name} changed since images/{name} was drawn: run make images"
    )


def test_every_picture_is_accounted_for() -> None:
    """A new picture gets listed above (and in images/README.md)."""
    on_disk = {p.name for p in IMAGES.iterdir() if p.suffix in (".png", ".svg")}
    assert on_disk == set(PICTURES)


def test_readme_shows_the_pictures() -> None:
    readme = (IMAGES.parent / "README.md").read_text()
    for name in ("scheme.svg", "lifecycle.svg", "browser.png", "status.png"):
        assert re.search(rf"!\[[^\]]+\]\(images/{re.escape(name)}\)", readme), (
            f"README.md does not show images/{name}"
        )


def test_images_readme_names_every_picture_and_how_to_remake_it() -> None:
    readme = (IMAGES / "README.md").read_text()
    for name in [*PICTURES, *set(GENERATED.values())]:
        assert name in readme, f"images/README.md does not mention {name}"
    assert "make images" in readme
    assert "make screenshot" in readme
