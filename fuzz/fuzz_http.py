"""Fuzz revgw's HTTP framing: any bytes either parse or raise revgw's HTTP error.

Input layout: byte 0 picks the reader (see ``MODES``), byte 1 the split step
(0 = one feed, n = every n bytes), the rest is the stream fed to it. Anything
but the expected error escaping ``test_one_input`` is a bug.
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
        from revgw import _http
        from revgw._errors import BadUpstreamResponse, HTTPError
else:
    from revgw import _http
    from revgw._errors import BadUpstreamResponse, HTTPError

# mode -> (reader, method for a response, feed EOF at the end)
MODES = [
    ("request", b"", False),
    ("response", b"GET", False),
    ("response", b"GET", True),
    ("response", b"HEAD", True),
    ("response", b"POST", True),
    ("render", b"", False),
]


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    kind, method, eof = MODES[data[0] % len(MODES)]
    stream = data[2:]
    parts = pieces(stream, data[1] % 64)
    if kind == "response":
        _response(method, parts, eof, stream)
    else:
        _request(parts, render=kind == "render")


def _request(parts: list[bytes], render: bool) -> None:
    reader = _http.RequestReader(max_head_bytes=4096)
    events: list[_http.RequestEvent] = []
    try:
        for part in parts:
            events += reader.feed(part)
    except HTTPError as exc:
        assert 400 <= exc.status < 600, exc
        events = reader.parsed_before_error
    for event in events:
        assert isinstance(
            event, _http.RequestHead | _http.Body | _http.EndOfMessage | _http.Upgraded
        )
        if render and isinstance(event, _http.RequestHead):
            # What the gateway sends on must parse again to the same framing.
            out = _http.render_request_head(event, "192.0.2.1", trusted=True)
            again = [e for e in _http.RequestReader().feed(out) if isinstance(e, _http.RequestHead)]
            assert len(again) == 1, out
            assert (again[0].chunked, again[0].content_length) == (
                event.chunked,
                event.content_length,
            ), out


def _response(method: bytes, parts: list[bytes], eof: bool, stream: bytes) -> None:
    reader = _http.ResponseReader(method, max_head_bytes=4096)
    out = b""
    try:
        for part in parts:
            out += reader.feed(part)
        if eof:
            reader.feed_eof()
    except BadUpstreamResponse:
        return
    assert stream.startswith(out), "forwarded bytes that the server did not send"


if __name__ == "__main__":
    main(test_one_input, atheris)
