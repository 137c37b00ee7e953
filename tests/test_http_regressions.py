"""Bugs found in the HTTP framing, each pinned by a test before its fix."""

from __future__ import annotations

import pytest

from revgw._errors import BadRequest
from revgw._http import EndOfMessage, RequestHead, RequestReader, ResponseReader, ResponseState


def test_pipelined_body_does_not_count_towards_the_next_head() -> None:
    # A 40 000-byte body followed by the start of the next request's head
    # once made the head-size guard answer 431 for a tiny head.
    reader = RequestReader()
    reader.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n")
    events = reader.feed(b"a" * 40000 + b"GET /ping HTTP/1.1\r\nHo")
    assert any(isinstance(e, EndOfMessage) for e in events)
    events = reader.feed(b"st: x\r\n\r\n")
    assert isinstance(events[0], RequestHead) and events[0].target == b"/ping"


def test_head_under_the_limit_dribbled_byte_by_byte_is_accepted() -> None:
    # Raw bytes and per-header sizes once shared one counter, so a 20 KiB
    # head fed a byte at a time counted twice and got 431 under a 32 KiB limit.
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"p" * 20000 + b"\r\n\r\n"
    reader = RequestReader(max_head_bytes=32 * 1024)
    events = []
    for i in range(len(head)):
        events += reader.feed(head[i : i + 1])
    assert isinstance(events[0], RequestHead)


def test_events_parsed_before_an_error_in_the_same_read_are_kept() -> None:
    # A good request followed by garbage in one read: the good one was lost.
    reader = RequestReader()
    try:
        reader.feed(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nNONSENSE\r\n\r\n")
    except BadRequest:
        parsed = reader.parsed_before_error
    else:
        raise AssertionError("garbage was accepted")
    assert isinstance(parsed[0], RequestHead) and parsed[0].target == b"/ok"
    assert isinstance(parsed[-1], EndOfMessage)


def test_close_caller_rewrites_only_the_final_head() -> None:
    # The caller asked to close: its answer must say so, whatever the server said.
    reader = ResponseReader(b"GET", close_caller=True)
    out = reader.feed(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    assert out == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    assert reader.state is ResponseState.DONE


OK_KEEP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize(
    ("reads", "close_caller", "expected"),
    [
        ([b"\r\n\r\n" + OK_KEEP], False, OK_KEEP),
        ([b"\r\n\r\n" + OK_KEEP], True, OK_CLOSE),
        ([b"\r\n", b"\n" + OK_KEEP], True, OK_CLOSE),
        ([b"\r\n", b"\r\n", OK_KEEP], True, OK_CLOSE),
        ([CONTINUE + b"\r\n" + OK_KEEP], True, CONTINUE + OK_CLOSE),
        ([CONTINUE, b"\r\n" + OK_KEEP], True, CONTINUE + OK_CLOSE),
        ([b"\r\n" + CONTINUE + b"\r\n\r\n", OK_KEEP], False, CONTINUE + OK_KEEP),
    ],
    ids=["before", "before-closing", "split", "alone", "after-1xx", "after-1xx-split", "both"],
)
def test_empty_lines_before_a_status_line_are_not_passed_on(
    reads: list[bytes], close_caller: bool, expected: bytes
) -> None:
    # The parser skips them; passed on, they came before the caller's status
    # line, and the Connection: close rewrite cut the head in the wrong place.
    reader = ResponseReader(b"GET", close_caller=close_caller)
    out = b"".join(reader.feed(data) for data in reads)
    assert out == expected
    assert reader.state is ResponseState.DONE
