"""Fuzz revgw's tunnel handshake: any bytes either parse or raise ProtocolError/AccessDenied.

Input layout: byte 0 picks the parser each line goes to (see ``PARSERS``),
byte 1 the split step (0 = one feed, n = every n bytes), the rest is the
stream fed to a ``LineReader``. Anything else escaping is a bug.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

atheris: Any = None
if __name__ == "__main__":  # imported (by tests/test_fuzz_smoke.py): plain Python
    with contextlib.suppress(ImportError):  # without atheris, replaying still works
        atheris = importlib.import_module("atheris")

from _common import main, pieces  # noqa: E402

if atheris is not None:
    with atheris.instrument_imports():
        from revgw import _handshake as hs
        from revgw._errors import AccessDenied, ProtocolError
else:
    from revgw import _handshake as hs
    from revgw._errors import AccessDenied, ProtocolError

TOKEN = "fuzz-token-0123456789"
CHALLENGE = hs.Challenge("0123456789abcdef" * 2, 5.0)
HELLO = hs.make_hello(TOKEN, CHALLENGE, "default", "fuzz", ())


def _verdict(line: bytes) -> None:
    hs.check_verdict(TOKEN, CHALLENGE, HELLO, line)


def _hello(line: bytes) -> None:
    hs.verify_hello(TOKEN, CHALLENGE, hs.parse_hello(line))


PARSERS = [hs.parse_challenge, _hello, _verdict]


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    selector = data[0] % (len(PARSERS) + 1)
    reader = hs.LineReader(limit=256)
    lines = 0
    try:
        for part in pieces(data[2:], data[1] % 64):
            reader.feed(part)
            while (line := reader.next_line()) is not None:
                # The last selector walks a client's view: CHALLENGE, then a verdict.
                parser = PARSERS[selector] if selector < len(PARSERS) else PARSERS[lines % 3]
                parser(line)
                lines += 1
                assert lines < 10_000
        reader.take_rest()
    except (ProtocolError, AccessDenied):
        return


if __name__ == "__main__":
    main(test_one_input, atheris)
