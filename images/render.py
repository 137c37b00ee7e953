"""Regenerate the pictures in images/ from their Graphviz sources (`make images`).

    scheme.dot    -> scheme.svg, scheme.png
    lifecycle.dot -> lifecycle.svg

Each generated file records the SHA-256 of the source it was drawn from: an XML
comment in an SVG, a tEXt chunk in a PNG. tests/test_images.py recomputes the
hash, so a source edited without `make images` fails the tests. Only Graphviz's
`dot` is needed (Debian: apt-get install graphviz); the standard library does
the rest.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# source -> the formats drawn from it
PICTURES = {"scheme": ["svg", "png"], "lifecycle": ["svg"]}
PNG_DPI = 144  # about 1600 px wide for the scheme: sharp at README width on any screen
MARK = "source sha256"  # what tests/test_images.py looks for


def source_hash(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def draw(source: Path, fmt: str) -> bytes:
    args = ["dot", f"-T{fmt}", str(source)]
    if fmt == "png":
        args.insert(1, f"-Gdpi={PNG_DPI}")
    return subprocess.run(args, check=True, capture_output=True).stdout


def mark_svg(svg: bytes, digest: str, name: str) -> bytes:
    """Put the source's hash in a comment right after the XML declaration."""
    declaration, sep, rest = svg.partition(b"\n")
    assert declaration.startswith(b"<?xml"), "dot's SVG no longer starts with <?xml"
    comment = f"<!-- {MARK}: {digest} (images/{name}.dot; regenerate with: make images) -->"
    return declaration + sep + comment.encode() + b"\n" + rest


def mark_png(png: bytes, digest: str) -> bytes:
    """Add a tEXt chunk with the source's hash right after IHDR (the first chunk)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "dot did not write a PNG"
    (ihdr_length,) = struct.unpack(">I", png[8:12])
    end_of_ihdr = 8 + 4 + 4 + ihdr_length + 4  # length, type, data, CRC
    data = MARK.encode() + b"\0" + digest.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def main() -> int:
    if shutil.which("dot") is None:
        sys.exit("make images needs Graphviz's dot: apt-get install graphviz (Debian, Ubuntu)")
    for name, formats in PICTURES.items():
        source = HERE / f"{name}.dot"
        digest = source_hash(source)
        for fmt in formats:
            picture = draw(source, fmt)
            picture = mark_svg(picture, digest, name) if fmt == "svg" else mark_png(picture, digest)
            target = HERE / f"{name}.{fmt}"
            target.write_bytes(picture)
            sys.stdout.write(f"images/{target.name} <- images/{source.name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
