"""Fuzzing, fast (issue 5, item 6): the invariant "parses or raises revgw's error".

The corpus in fuzz/corpus is replayed through both harnesses in-process (no
atheris needed), and hypothesis feeds arbitrary byte streams, cut at
arbitrary points, into the handshake's LineReader and each of its parsers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revgw import _handshake as hs
from revgw._errors import AccessDenied, ProtocolError

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_handshake  # noqa: E402
import fuzz_http  # noqa: E402
from _common import replay  # noqa: E402

HTTP_CORPUS = sorted((FUZZ / "corpus" / "http").iterdir())
HANDSHAKE_CORPUS = sorted((FUZZ / "corpus" / "handshake").iterdir())


def test_corpus_is_seeded() -> None:
    assert len(HTTP_CORPUS) >= 30
    assert len(HANDSHAKE_CORPUS) >= 20


@pytest.mark.parametrize("path", HTTP_CORPUS, ids=lambda p: p.name)
def test_http_corpus_replays_clean(path: Path) -> None:
    fuzz_http.test_one_input(path.read_bytes())


@pytest.mark.parametrize("path", HANDSHAKE_CORPUS, ids=lambda p: p.name)
def test_handshake_corpus_replays_clean(path: Path) -> None:
    fuzz_handshake.test_one_input(path.read_bytes())


def test_harness_replay_exits_0_without_atheris() -> None:
    """``python fuzz/fuzz_http.py --replay DIR`` is what the README and the lead's target run."""
    result = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_http.py"), "--replay", str(FUZZ / "corpus" / "http")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"replayed {len(HTTP_CORPUS)} inputs, 0 failed" in result.stderr


def test_harness_replay_reports_an_escaping_exception(tmp_path: Path) -> None:
    """The replay is not vacuous: an unexpected exception fails it, naming the input."""
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00GET / HTTP/1.1\r\n\r\n")

    def explode(data: bytes) -> None:
        raise RuntimeError("boom")

    assert replay(explode, [str(bad)]) == 1
    assert replay(fuzz_http.test_one_input, [str(bad)]) == 0


PROPERTY = settings(max_examples=300, deadline=None)
LINEISH = st.sampled_from(
    [
        b"REVGW/1 ",
        b"CHALLENGE ",
        b"AUTH ",
        b"READY ",
        b"DENIED ",
        b"nonce=",
        b"heartbeat=5",
        b"key=",
        b"mac=",
        b"proof=",
        b"hosts=-",
        b"0123456789abcdef",
        b"=",
        b" ",
        b"\r\n",
        b"\r",
        b"\n",
        b"\xff",
    ]
)
stream = st.lists(LINEISH | st.binary(max_size=12), max_size=40).map(b"".join)
cuts = st.lists(st.integers(min_value=0, max_value=600), max_size=8)


@PROPERTY
@given(stream, cuts, st.integers(min_value=0, max_value=3))
def test_any_handshake_stream_parses_or_raises_protocol_errors(
    data: bytes, cut: list[int], selector: int
) -> None:
    bounds = sorted({min(c, len(data)) for c in cut})
    pieces = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    reader = hs.LineReader(limit=128)
    challenge = hs.Challenge("ab" * 16, 5.0)
    hello = hs.make_hello("t", challenge, "default", "c", ())
    parsers = [
        hs.parse_challenge,
        hs.parse_hello,
        lambda line: hs.check_verdict("t", challenge, hello, line),
    ]
    taken = 0
    try:
        for piece in pieces:
            reader.feed(piece)
            while (line := reader.next_line()) is not None:
                assert b"\r\n" not in line
                parsers[selector if selector < 3 else taken % 3](line)
                taken += 1
    except (ProtocolError, AccessDenied):
        return


@PROPERTY
@given(st.binary(max_size=600))
def test_any_bytes_through_both_harnesses(data: bytes) -> None:
    fuzz_http.test_one_input(data)
    fuzz_handshake.test_one_input(data)
