"""HTTP/1.1 framing, sans-IO: bytes in, request events / response bytes out.

Every reader is fed the same input whole, byte by byte and at random cut points,
and must come to the same answer; bad input must surface as revgw's own HTTP
errors (the status the caller will see), never as a parser's exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revgw._errors import (
    BadRequest,
    BadUpstreamResponse,
    HeadersTooLarge,
    HTTPError,
    NoTunnel,
    PoolTimeout,
    TunnelOffline,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from revgw._http import (
    LAST_CHUNK,
    Body,
    EndOfMessage,
    RequestEvent,
    RequestHead,
    RequestReader,
    ResponseReader,
    ResponseState,
    Upgraded,
    encode_chunk,
    error_response,
    render_request_head,
)

PROPERTY = settings(max_examples=200, deadline=None)


# --- helpers --------------------------------------------------------------------


def feed_pieces(reader: RequestReader, pieces: Sequence[bytes]) -> list[RequestEvent]:
    events: list[RequestEvent] = []
    for piece in pieces:
        events += reader.feed(piece)
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points)]


def merged(events: list[RequestEvent]) -> list[RequestEvent]:
    """Events with adjacent Body (or Upgraded) data joined: how the split fell is not news."""
    out: list[RequestEvent] = []
    for event in events:
        if isinstance(event, Body) and out and isinstance(out[-1], Body):
            out[-1] = Body(out[-1].data + event.data)
        elif isinstance(event, Upgraded) and out and isinstance(out[-1], Upgraded):
            out[-1] = Upgraded(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def read_requests(data: bytes, pieces: Sequence[bytes] | None = None) -> list[RequestEvent]:
    return merged(feed_pieces(RequestReader(), pieces if pieces is not None else [data]))


def heads(events: list[RequestEvent]) -> list[RequestHead]:
    return [e for e in events if isinstance(e, RequestHead)]


def body_of(events: list[RequestEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body))


def header(head: RequestHead | bytes, name: bytes) -> list[bytes]:
    """Values of header ``name`` (any case) in a parsed head or in rendered bytes."""
    if isinstance(head, bytes):
        lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
        pairs = [tuple(line.split(b": ", 1)) for line in lines]
    else:
        pairs = [(n, v) for n, v in head.headers]
    return [v for n, v in pairs if n.lower() == name.lower()]


def one_request(data: bytes) -> RequestHead:
    events = read_requests(data)
    found = heads(events)
    assert len(found) == 1
    return found[0]


class ParsedResponse:
    """An independent reading of a response with httptools, for checking our output."""

    def __init__(self, data: bytes) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False
        self.keep_alive = False
        self._parser = httptools.HttpResponseParser(self)
        self._parser.feed_data(data)
        self.status = self._parser.get_status_code()

    def on_headers_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def get(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def read_response(
    method: bytes, pieces: Sequence[bytes], eof: bool = False
) -> tuple[ResponseReader, list[bytes]]:
    reader = ResponseReader(method)
    outs = [reader.feed(piece) for piece in pieces]
    if eof:
        reader.feed_eof()
    return reader, outs


GET = b"GET /index.html?q=1 HTTP/1.1\r\nHost: App.Example.com:8080\r\nAccept: */*\r\n\r\n"
POST_CL = b"POST /upload HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 11\r\n\r\nhello world"
CHUNKED_PAYLOAD = b"hello, chunked world" * 3
POST_CHUNKED = (
    b"POST /upload HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    + encode_chunk(CHUNKED_PAYLOAD[:7])
    + encode_chunk(CHUNKED_PAYLOAD[7:])
    + LAST_CHUNK
)
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: app.example.com\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


# --- RequestReader: the happy paths ----------------------------------------------------


def test_simple_get_events() -> None:
    events = RequestReader().feed(GET)
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.method == b"GET"
    assert head.target == b"/index.html?q=1"
    assert head.version == "1.1"
    assert head.headers == [(b"Host", b"App.Example.com:8080"), (b"Accept", b"*/*")]
    assert head.host == "app.example.com"
    assert head.keep_alive is True
    assert head.upgrade is False
    assert head.chunked is False
    assert head.content_length is None
    assert head.has_body is False


@pytest.mark.parametrize(
    "value, host",
    [
        (b"example.com", "example.com"),
        (b"EXAMPLE.com", "example.com"),
        (b"example.com:80", "example.com"),
        (b"[::1]:9000", "[::1]"),
        (b"[::1]", "[::1]"),
        (b"[2001:DB8::1]:443", "[2001:db8::1]"),
        (b"10.0.0.1:8080", "10.0.0.1"),
    ],
)
def test_host_is_lowercased_without_port(value: bytes, host: str) -> None:
    head = one_request(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")
    assert head.host == host


def test_get_byte_by_byte_gives_same_events() -> None:
    assert read_requests(GET, bytewise(GET)) == read_requests(GET)


@pytest.mark.parametrize(
    "request_bytes", [POST_CL, POST_CHUNKED], ids=["content-length", "chunked"]
)
@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_request_body(request_bytes: bytes, how: str) -> None:
    pieces = [request_bytes] if how == "whole" else bytewise(request_bytes)
    events = feed_pieces(RequestReader(), pieces)
    assert isinstance(events[0], RequestHead)
    assert isinstance(events[-1], EndOfMessage)
    assert all(isinstance(e, Body) for e in events[1:-1])
    head = events[0]
    if head.chunked:
        assert head.content_length is None
        assert body_of(events) == CHUNKED_PAYLOAD
    else:
        assert head.content_length == 11
        assert body_of(events) == b"hello world"
    assert head.has_body
    assert merged(events) == read_requests(request_bytes)


def test_request_events_do_not_wait_for_the_whole_body() -> None:
    reader = RequestReader()
    events = reader.feed(POST_CL[:-5])
    assert [type(e) for e in events] == [RequestHead, Body]
    assert reader.feed(POST_CL[-5:]) == [Body(b"world"), EndOfMessage()]


def test_pipelined_requests_come_out_in_order() -> None:
    second = b"DELETE /b HTTP/1.1\r\nHost: other.example.com\r\n\r\n"
    events = RequestReader().feed(POST_CL + second + GET)
    found = heads(events)
    assert [h.method for h in found] == [b"POST", b"DELETE", b"GET"]
    assert [h.host for h in found] == ["app.example.com", "other.example.com", "app.example.com"]
    assert [type(e) for e in events] == [
        RequestHead,
        Body,
        EndOfMessage,
        RequestHead,
        EndOfMessage,
        RequestHead,
        EndOfMessage,
    ]
    assert found[0].headers != found[1].headers


def test_pipelined_requests_byte_by_byte() -> None:
    data = POST_CHUNKED + GET + POST_CL
    assert read_requests(data, bytewise(data)) == read_requests(data)


@pytest.mark.parametrize(
    "request_bytes, keep_alive",
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
    ],
)
def test_keep_alive(request_bytes: bytes, keep_alive: bool) -> None:
    assert one_request(request_bytes).keep_alive is keep_alive


def test_http10_without_host_is_allowed() -> None:
    head = one_request(b"GET / HTTP/1.0\r\n\r\n")
    assert head.version == "1.0"
    assert head.host == ""


def test_upgrade_request_hands_over_raw_bytes() -> None:
    reader = RequestReader()
    events = reader.feed(UPGRADE + b"\x81\x05hello")
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.upgrade is True
    assert isinstance(events[-1], Upgraded)
    assert events[-1].data == b"\x81\x05hello"
    assert reader.feed(b"GET / HTTP/1.1\r\n\r\n") == [Upgraded(b"GET / HTTP/1.1\r\n\r\n")]
    assert reader.feed(b"\x00\xff") == [Upgraded(b"\x00\xff")]


def test_upgrade_request_byte_by_byte() -> None:
    data = UPGRADE + b"raw stream"
    events = merged(feed_pieces(RequestReader(), bytewise(data)))
    assert heads(events)[0].upgrade is True
    assert b"".join(e.data for e in events if isinstance(e, Upgraded)) == b"raw stream"


# --- RequestReader: failures ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"GET / FTP/1.1\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: ten\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
    ],
)
def test_malformed_request_is_bad_request(data: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        RequestReader().feed(data)
    assert info.value.status == 400


def test_malformed_request_byte_by_byte_is_bad_request() -> None:
    reader = RequestReader()
    with pytest.raises(BadRequest):
        feed_pieces(reader, bytewise(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"))


def test_http11_without_host_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="Host"):
        RequestReader().feed(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")


def test_http11_with_empty_host_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="Host"):
        RequestReader().feed(b"GET / HTTP/1.1\r\nHost: \r\n\r\n")


def test_two_host_headers_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")


def test_connect_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="CONNECT"):
        RequestReader().feed(
            b"CONNECT app.example.com:443 HTTP/1.1\r\nHost: app.example.com\r\n\r\n"
        )


def test_content_length_with_transfer_encoding_is_bad_request() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    with pytest.raises(BadRequest):
        RequestReader().feed(data)


def test_error_in_second_pipelined_request_is_bad_request() -> None:
    reader = RequestReader()
    with pytest.raises(BadRequest):
        reader.feed(GET + b"GARBAGE\r\n\r\n")


def big_head(size: int) -> bytes:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n"
    filler = b"X-Filler-%04d: " + b"v" * 40 + b"\r\n"
    i = 0
    while len(head) < size:
        head += filler % i
        i += 1
    return head + b"\r\n"


def test_head_over_limit_is_headers_too_large() -> None:
    with pytest.raises(HeadersTooLarge) as info:
        RequestReader(max_head_bytes=1000).feed(big_head(2000))
    assert info.value.status == 431


def test_head_over_default_limit_is_headers_too_large() -> None:
    with pytest.raises(HeadersTooLarge):
        RequestReader().feed(big_head(40 * 1024))


def test_head_over_limit_in_small_feeds_is_headers_too_large() -> None:
    reader = RequestReader(max_head_bytes=1000)
    with pytest.raises(HeadersTooLarge):
        feed_pieces(reader, split_at(big_head(2000), range(0, 2000, 50)))


def test_one_endless_header_line_in_one_feed_is_headers_too_large() -> None:
    with pytest.raises(HeadersTooLarge):
        RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: " + b"a" * 100_000)


def test_one_endless_header_line_dribbled_is_headers_too_large() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
    with pytest.raises(HeadersTooLarge):
        for _ in range(1000):
            assert reader.feed(b"a" * 100) == []


def test_endless_url_dribbled_is_headers_too_large() -> None:
    reader = RequestReader()
    reader.feed(b"GET /")
    with pytest.raises(HeadersTooLarge):
        for _ in range(1000):
            assert reader.feed(b"a" * 100) == []


def test_head_under_limit_is_accepted_whole() -> None:
    data = big_head(600)
    assert len(heads(RequestReader(max_head_bytes=1000).feed(data))) == 1


@pytest.mark.parametrize("pieces", ["bytewise", "two-halves", "every-50"])
def test_head_under_limit_is_accepted_however_split(pieces: str) -> None:
    data = big_head(900)
    assert len(data) < 1000
    split = {
        "bytewise": bytewise(data),
        "two-halves": split_at(data, [len(data) // 2]),
        "every-50": split_at(data, range(0, len(data), 50)),
    }[pieces]
    assert len(heads(feed_pieces(RequestReader(max_head_bytes=1000), split))) == 1


def test_bad_request_is_raised_again_on_later_feeds() -> None:
    reader = RequestReader()
    with pytest.raises(BadRequest):
        reader.feed(b"GARBAGE\r\n\r\n")
    with pytest.raises(BadRequest):
        reader.feed(GET)


# --- render_request_head ----------------------------------------------------------------------


def render(data: bytes, caller_ip: str = "203.0.113.9", proto: str = "http") -> bytes:
    return render_request_head(one_request(data), caller_ip, proto)


def test_render_simple_get() -> None:
    out = render(GET)
    assert out == (
        b"GET /index.html?q=1 HTTP/1.1\r\n"
        b"Host: App.Example.com:8080\r\n"
        b"Accept: */*\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\n"
        b"X-Forwarded-Host: app.example.com\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"\r\n"
    )


def test_render_drops_hop_by_hop_headers() -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        b"Connection: keep-alive, X-Secret-Hop\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-Secret-Hop: do not forward\r\n"
        b"Upgrade: h2c\r\n"
        b"X-Kept: yes\r\n\r\n"
    )
    out = render(data)
    for name in [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"proxy-connection",
        b"x-secret-hop",
        b"upgrade",
        b"transfer-encoding",
    ]:
        assert header(out, name) == [], name
    assert header(out, b"x-kept") == [b"yes"]
    assert header(out, b"host") == [b"a"]


def test_render_drops_transfer_encoding_of_content_length_request() -> None:
    out = render(POST_CL)
    assert header(out, b"content-length") == [b"11"]
    assert header(out, b"transfer-encoding") == []


def test_render_replaces_forwarding_headers() -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\n"
        b"X-Forwarded-For: 1.1.1.1\r\n"
        b"x-forwarded-host: evil.example\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"Forwarded: for=1.1.1.1;proto=https\r\n\r\n"
    )
    out = render(data, caller_ip="203.0.113.9", proto="http")
    assert header(out, b"x-forwarded-for") == [b"203.0.113.9"]
    assert header(out, b"x-forwarded-host") == [b"app.example.com"]
    assert header(out, b"x-forwarded-proto") == [b"http"]
    assert b"1.1.1.1" not in out
    assert b"evil" not in out
    assert b"https" not in out


def test_render_proto_is_the_gateways() -> None:
    assert header(render(GET, proto="https"), b"x-forwarded-proto") == [b"https"]


def test_render_keeps_upgrade_for_upgrade_requests() -> None:
    out = render(UPGRADE)
    assert header(out, b"upgrade") == [b"websocket"]
    assert header(out, b"connection") == [b"upgrade"]
    assert header(out, b"sec-websocket-key") == [b"dGhlIHNhbXBsZSBub25jZQ=="]
    assert one_request(out).upgrade is True


def test_render_chunked_request_says_chunked() -> None:
    out = render(POST_CHUNKED)
    assert header(out, b"transfer-encoding") == [b"chunked"]
    assert one_request(out + encode_chunk(b"x") + LAST_CHUNK).chunked is True


def test_render_does_not_silently_drop_transfer_codings() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + encode_chunk(b"\x1f\x8b")
        + LAST_CHUNK
    )
    try:
        out = render(data)
    except BadRequest:
        return  # refusing it would be fine too
    assert b"gzip" in b"".join(header(out, b"transfer-encoding"))


def test_render_http10_closes() -> None:
    out = render(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert out.startswith(b"GET / HTTP/1.0\r\n")
    assert header(out, b"connection") == [b"close"]
    assert header(out, b"x-forwarded-host") == []


def test_render_keeps_header_order_case_and_duplicates() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-B: 1\r\nx-a: 2\r\nX-B: 3\r\n\r\n"
    out = render(data)
    assert out.split(b"\r\n")[1:5] == [b"Host: a", b"X-B: 1", b"x-a: 2", b"X-B: 3"]


@pytest.mark.parametrize("data", [GET, POST_CL, POST_CHUNKED, UPGRADE, b"GET / HTTP/1.0\r\n\r\n"])
def test_render_round_trips_through_request_reader(data: bytes) -> None:
    original = one_request(data)
    out = render_request_head(original, "203.0.113.9")
    assert out.endswith(b"\r\n\r\n")
    again = heads(RequestReader().feed(out))[0]
    assert again.method == original.method
    assert again.target == original.target
    assert again.version == original.version
    assert again.host == original.host
    assert again.upgrade == original.upgrade
    assert again.chunked == original.chunked
    assert again.content_length == original.content_length
    # Rendering is idempotent apart from the gateway's own headers.
    assert render_request_head(again, "203.0.113.9") == out


def test_chunked_post_round_trips_with_encode_chunk() -> None:
    payload = [b"first", b"", b"\r\n0\r\n\r\n", b"x" * 300]
    events = RequestReader().feed(POST_CHUNKED)
    head = events[0]
    assert isinstance(head, RequestHead)
    wire = render_request_head(head, "203.0.113.9")
    wire += b"".join(encode_chunk(p) for p in payload if p) + LAST_CHUNK
    for pieces in ([wire], bytewise(wire)):
        events = feed_pieces(RequestReader(), pieces)
        assert body_of(events) == b"".join(payload)
        assert isinstance(events[-1], EndOfMessage)


def test_encode_chunk_format() -> None:
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


# --- ResponseReader ---------------------------------------------------------------------------

OK_CL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
OK_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + encode_chunk(b"hel")
    + encode_chunk(b"lo")
    + LAST_CHUNK
)


def test_response_head_is_held_until_complete() -> None:
    head, body = OK_CL.split(b"\r\n\r\n")
    reader = ResponseReader(b"GET")
    for byte in bytewise(head + b"\r\n\r"):
        assert reader.feed(byte) == b""
        assert reader.state is ResponseState.HEAD
    assert reader.feed(b"\n") == head + b"\r\n\r\n"
    assert reader.state is ResponseState.BODY
    assert reader.feed(body) == body
    assert reader.state is ResponseState.DONE
    assert reader.status == 200


@pytest.mark.parametrize("response", [OK_CL, OK_CHUNKED], ids=["content-length", "chunked"])
@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_framed_response_passes_through_and_is_reusable(response: bytes, how: str) -> None:
    pieces = [response] if how == "whole" else bytewise(response)
    reader, outs = read_response(b"GET", pieces)
    assert b"".join(outs) == response
    assert reader.state is ResponseState.DONE
    assert reader.status == 200
    assert reader.keep_alive is True
    assert reader.reusable is True
    assert reader.close_delimited is False
    assert reader.trailing_garbage is False
    assert reader.sent_bytes == len(response)


def test_response_not_reusable_until_done() -> None:
    reader = ResponseReader(b"GET")
    reader.feed(OK_CL[:-1])
    assert reader.state is ResponseState.BODY
    assert reader.reusable is False
    reader.feed(OK_CL[-1:])
    assert reader.reusable is True


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_close_delimited_response_ends_at_eof(how: str) -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    pieces = [response] if how == "whole" else bytewise(response)
    reader, outs = read_response(b"GET", pieces)
    assert b"".join(outs) == response
    assert reader.state is ResponseState.BODY
    assert reader.close_delimited is True
    reader.feed_eof()
    assert reader.state is ResponseState.DONE
    assert reader.reusable is False


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_response_asking_to_close_is_not_reusable(response: bytes) -> None:
    reader, outs = read_response(b"GET", [response])
    assert b"".join(outs) == response
    assert reader.state is ResponseState.DONE
    assert reader.keep_alive is False
    assert reader.reusable is False


def test_http10_keep_alive_response_is_reusable() -> None:
    response = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    reader, _ = read_response(b"GET", [response])
    assert reader.reusable is True


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_head_response_ends_at_its_head(response: bytes) -> None:
    reader, outs = read_response(b"HEAD", [response])
    assert b"".join(outs) == response
    assert reader.state is ResponseState.DONE
    assert reader.reusable is True


def test_head_response_byte_by_byte() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    reader, outs = read_response(b"HEAD", bytewise(response))
    assert b"".join(outs) == response
    assert outs[-1] == response
    assert reader.reusable is True


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_bodyless_status_ends_at_head_and_is_reusable(status: bytes) -> None:
    response = b"HTTP/1.1 " + status + b"\r\nContent-Length: 10\r\n\r\n"
    reader, outs = read_response(b"GET", [response])
    assert b"".join(outs) == response
    assert reader.state is ResponseState.DONE
    assert reader.status == int(status[:3])
    assert reader.close_delimited is False
    assert reader.reusable is True


def test_100_continue_is_passed_on_at_once() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    reader = ResponseReader(b"POST")
    assert reader.feed(interim) == interim
    assert reader.state is ResponseState.HEAD
    assert reader.reusable is False
    assert reader.feed(OK_CL) == OK_CL
    assert reader.status == 200
    assert reader.reusable is True


def test_100_continue_byte_by_byte() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    reader, outs = read_response(b"POST", bytewise(interim + OK_CL))
    assert b"".join(outs) == interim + OK_CL
    assert outs[len(interim) - 1] == interim
    assert reader.reusable is True


def test_100_continue_and_final_response_in_one_read() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + OK_CHUNKED
    reader, outs = read_response(b"POST", [data])
    assert outs == [data]
    assert reader.status == 200
    assert reader.reusable is True


def test_partial_final_head_after_100_continue_is_held() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    reader = ResponseReader(b"POST")
    assert reader.feed(interim + b"HTTP/1.1 2") == interim
    with pytest.raises(BadUpstreamResponse):
        reader.feed(b"garbage\r\n\r\n")


def test_101_switches_to_raw_bytes() -> None:
    head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    reader = ResponseReader(b"GET")
    assert reader.feed(head + b"\x81\x02hi") == head + b"\x81\x02hi"
    assert reader.state is ResponseState.UPGRADED
    assert reader.status == 101
    assert reader.reusable is False
    assert reader.feed(b"HTTP/1.1 garbage \x00\xff") == b"HTTP/1.1 garbage \x00\xff"
    reader.feed_eof()
    assert reader.state is ResponseState.UPGRADED


def test_101_byte_by_byte() -> None:
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw!"
    reader, outs = read_response(b"GET", bytewise(data))
    assert b"".join(outs) == data
    assert reader.state is ResponseState.UPGRADED


@pytest.mark.parametrize(
    "data",
    [
        b"hello world\r\n\r\n",
        b"<html>oops</html>",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x00\x01\x02",
    ],
)
def test_garbage_response_is_bad_upstream_response(data: bytes) -> None:
    with pytest.raises(BadUpstreamResponse) as info:
        ResponseReader(b"GET").feed(data)
    assert info.value.status == 502
    assert info.value.code == "bad-upstream-response"


def test_garbage_response_byte_by_byte_forwards_nothing() -> None:
    reader = ResponseReader(b"GET")
    outs = []
    with pytest.raises(BadUpstreamResponse):
        for byte in bytewise(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"):
            outs.append(reader.feed(byte))
    assert b"".join(outs) == b""


@pytest.mark.parametrize("partial", [b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nContent-Le"])
def test_eof_before_head_is_bad_upstream_response(partial: bytes) -> None:
    reader = ResponseReader(b"GET")
    assert reader.feed(partial) == b""
    with pytest.raises(BadUpstreamResponse, match="before its response head"):
        reader.feed_eof()


@pytest.mark.parametrize(
    "response", [OK_CL[:-2], OK_CHUNKED[:-3]], ids=["content-length", "chunked"]
)
def test_eof_mid_body_is_bad_upstream_response(response: bytes) -> None:
    reader = ResponseReader(b"GET")
    reader.feed(response)
    with pytest.raises(BadUpstreamResponse, match="mid-body"):
        reader.feed_eof()


def test_eof_after_done_is_fine() -> None:
    reader, _ = read_response(b"GET", [OK_CL], eof=True)
    assert reader.state is ResponseState.DONE


def huge_response_head(size: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * size + b"\r\nContent-Length: 0\r\n\r\n"


def test_response_head_over_limit_dribbled_is_bad_upstream_response() -> None:
    reader = ResponseReader(b"GET", max_head_bytes=100)
    with pytest.raises(BadUpstreamResponse, match="over 100 bytes"):
        for piece in split_at(huge_response_head(500), range(0, 600, 10)):
            reader.feed(piece)


def test_response_head_over_default_limit_is_bad_upstream_response() -> None:
    reader = ResponseReader(b"GET")
    with pytest.raises(BadUpstreamResponse):
        for piece in split_at(huge_response_head(100_000), range(0, 200_000, 16 * 1024)):
            reader.feed(piece)


@pytest.mark.parametrize("pieces", [1, 2])
def test_response_head_over_limit_in_few_reads_is_bad_upstream_response(pieces: int) -> None:
    data = huge_response_head(500)
    reader = ResponseReader(b"GET", max_head_bytes=100)
    with pytest.raises(BadUpstreamResponse):
        for piece in split_at(data, [90] if pieces == 2 else []):
            reader.feed(piece)


def test_response_head_at_limit_is_accepted_dribbled() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    reader = ResponseReader(b"GET", max_head_bytes=len(data))
    outs = [reader.feed(b) for b in bytewise(data)]
    assert b"".join(outs) == data
    assert reader.reusable is True


def test_bytes_after_complete_response_make_it_unreusable() -> None:
    reader = ResponseReader(b"GET")
    assert reader.feed(OK_CL) == OK_CL
    assert reader.reusable is True
    assert reader.feed(b"surprise") == b""
    assert reader.trailing_garbage is True
    assert reader.reusable is False


@pytest.mark.parametrize(
    "extra",
    [b"GARBAGE", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
    ids=["garbage", "unsolicited-response"],
)
def test_trailing_bytes_in_same_read_make_it_unreusable(extra: bytes) -> None:
    reader = ResponseReader(b"GET")
    reader.feed(OK_CL + extra)
    assert reader.state is ResponseState.DONE
    assert reader.trailing_garbage is True
    assert reader.reusable is False


@pytest.mark.parametrize(
    "extra",
    [b"GARBAGE", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
    ids=["garbage", "unsolicited-response"],
)
def test_trailing_bytes_in_same_read_are_not_forwarded(extra: bytes) -> None:
    reader = ResponseReader(b"GET")
    assert reader.feed(OK_CL + extra) == OK_CL


# --- error_response -------------------------------------------------------------------------


ALL_ERRORS = [
    HTTPError,
    BadRequest,
    NoTunnel,
    HeadersTooLarge,
    UpstreamUnreachable,
    BadUpstreamResponse,
    TunnelOffline,
    PoolTimeout,
    UpstreamTimeout,
]


@pytest.mark.parametrize("error_class", ALL_ERRORS)
@pytest.mark.parametrize("keep_alive", [True, False])
def test_error_response_is_valid_http(error_class: type[HTTPError], keep_alive: bool) -> None:
    error = error_class("no tunnel for host app.example.com — try later")
    data = error_response(error, keep_alive)
    parsed = ParsedResponse(data)
    assert parsed.complete
    assert parsed.status == error.status
    assert parsed.body == "no tunnel for host app.example.com — try later\n".encode()
    assert parsed.get(b"content-length") == [str(len(parsed.body)).encode()]
    assert parsed.get(b"x-revgw-error") == [error.code.encode()]
    assert parsed.get(b"content-type")[0].startswith(b"text/plain")
    assert parsed.get(b"connection") == [b"keep-alive" if keep_alive else b"close"]
    assert parsed.keep_alive is keep_alive
    if error_class in (TunnelOffline, PoolTimeout):
        assert error.status == 503
        assert parsed.get(b"retry-after") == [str(error.retry_after).encode()]
    else:
        assert parsed.get(b"retry-after") == []
    # Our own response reader frames it too, with no bytes left over.
    reader, outs = read_response(b"GET", [data])
    assert b"".join(outs) == data
    assert reader.state is ResponseState.DONE
    assert reader.reusable is keep_alive


@pytest.mark.parametrize(
    "error, status, code, retry_after",
    [
        (BadRequest("x"), 400, b"bad-request", None),
        (NoTunnel("x"), 404, b"no-tunnel", None),
        (HeadersTooLarge("x"), 431, b"headers-too-large", None),
        (UpstreamUnreachable("x"), 502, b"upstream-unreachable", None),
        (BadUpstreamResponse("x"), 502, b"bad-upstream-response", None),
        (TunnelOffline("x"), 503, b"tunnel-offline", b"5"),
        (PoolTimeout("x"), 503, b"no-free-connection", b"1"),
        (UpstreamTimeout("x"), 504, b"upstream-timeout", None),
    ],
)
def test_error_response_status_and_code(
    error: HTTPError, status: int, code: bytes, retry_after: bytes | None
) -> None:
    parsed = ParsedResponse(error_response(error, keep_alive=False))
    assert parsed.status == status
    assert parsed.get(b"x-revgw-error") == [code]
    assert parsed.get(b"retry-after") == ([retry_after] if retry_after else [])


def test_error_response_status_line_has_reason() -> None:
    data = error_response(TunnelOffline("tunnel 'default' has no client"), keep_alive=True)
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert data.endswith(b"\r\n\r\ntunnel 'default' has no client\n")


def test_error_response_message_cannot_inject_headers() -> None:
    data = error_response(BadRequest("bad\r\nX-Injected: yes\r\n\r\n"), keep_alive=True)
    parsed = ParsedResponse(data)
    assert parsed.get(b"x-injected") == []
    assert parsed.body == b"bad\r\nX-Injected: yes\n"


# --- properties ----------------------------------------------------------------------------------

HTTPISH = st.sampled_from(
    [
        b"GET ",
        b"POST ",
        b"CONNECT ",
        b"HEAD ",
        b"/ ",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 101 Switching",
        b"HTTP/1.1 204 No",
        b"\r\n",
        b"\r\n\r\n",
        b"Host: a",
        b"Host: [::1]:80",
        b"Content-Length: 3",
        b"Content-Length: -1",
        b"Content-Length: 99999999999999999999999",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip",
        b"Connection: close",
        b"Connection: upgrade",
        b"Upgrade: websocket",
        b"0\r\n\r\n",
        b"3\r\nabc\r\n",
        b"ffffffffffffffffffff\r\n",
        b":",
        b" ",
    ]
)
httpish = st.lists(HTTPISH | st.binary(max_size=6), max_size=25).map(b"".join)
any_bytes = st.binary(max_size=400) | httpish
cuts = st.lists(st.integers(min_value=0, max_value=500), max_size=8)


@PROPERTY
@given(any_bytes, cuts)
def test_request_reader_only_raises_http_errors(data: bytes, cut: list[int]) -> None:
    reader = RequestReader(max_head_bytes=256)
    try:
        events = feed_pieces(reader, split_at(data, cut))
    except HTTPError as exc:
        assert isinstance(exc, BadRequest | HeadersTooLarge)
        assert 400 <= exc.status < 500
        return
    for event in events:
        assert isinstance(event, RequestHead | Body | EndOfMessage | Upgraded)


@PROPERTY
@given(any_bytes, cuts, st.sampled_from([b"GET", b"HEAD", b"POST"]), st.booleans())
def test_response_reader_only_raises_bad_upstream_response(
    data: bytes, cut: list[int], method: bytes, eof: bool
) -> None:
    reader = ResponseReader(method, max_head_bytes=256)
    outs = []
    try:
        for piece in split_at(data, cut):
            outs.append(reader.feed(piece))
        if eof:
            reader.feed_eof()
    except BadUpstreamResponse:
        return
    for out in outs:
        assert isinstance(out, bytes)
    # Never more out than in, and what goes out is a prefix of what came in.
    assert data.startswith(b"".join(outs))


TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
header_name = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(lambda s: "X-" + s)
header_value = st.text(TOKEN_CHARS + " ./;=,", max_size=30).map(str.strip)
path = st.lists(st.text(TOKEN_CHARS + "._~", min_size=1, max_size=8), max_size=4).map(
    lambda parts: "/" + "/".join(parts)
)


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bytes, bytes, str, list[tuple[bytes, bytes]]]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    target = draw(path)
    headers = [
        (n.encode(), v.encode()) for n, v in draw(st.lists(st.tuples(header_name, header_value)))
    ]
    body = draw(st.binary(max_size=200))
    framing = draw(st.sampled_from(["length", "chunked"]))
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: svc.example.com"]
    lines += [n + b": " + v for n, v in headers]
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        wire_body = body
    else:
        lines.append(b"Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(min_value=1, max_value=50), max_size=10))
        wire_body, start = b"", 0
        for size in sizes:
            if start < len(body):
                wire_body += encode_chunk(body[start : start + size])
                start += size
        if start < len(body):
            wire_body += encode_chunk(body[start:])
        wire_body += LAST_CHUNK
    data = b"\r\n".join(lines) + b"\r\n\r\n" + wire_body
    return data, body, target, headers


EMPTY_LINES = st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])


@PROPERTY
@given(valid_requests(), EMPTY_LINES, EMPTY_LINES, cuts, st.booleans())
def test_a_rendered_head_has_one_empty_line_its_last(
    request: tuple[bytes, bytes, str, list[tuple[bytes, bytes]]],
    before: bytes,
    after: bytes,
    cut: list[int],
    whole: bool,
) -> None:
    """However it came (with empty lines before or after it), each head sent on ends
    where the private server will see it end: nothing of ours after its empty line."""
    data = before + request[0] + after
    events = feed_pieces(RequestReader(), [data] if whole else split_at(data, cut))
    for head in heads(events):
        rendered = render_request_head(head, "203.0.113.9")
        assert rendered.find(b"\r\n\r\n") == len(rendered) - 4, rendered


@PROPERTY
@given(valid_requests(), cuts, st.booleans())
def test_valid_requests_parse_the_same_however_split(
    request: tuple[bytes, bytes, str, list[tuple[bytes, bytes]]], cut: list[int], twice: bool
) -> None:
    data, body, target, headers = request
    if twice:  # pipelined: the same request again on the same connection
        data = data + data
    whole = feed_pieces(RequestReader(), [data])
    split = feed_pieces(RequestReader(), split_at(data, cut))
    assert merged(split) == merged(whole)
    found = heads(whole)
    assert len(found) == (2 if twice else 1)
    head = found[0]
    assert head.target == target.encode()
    assert head.host == "svc.example.com"
    assert head.headers[1 : 1 + len(headers)] == headers
    assert body_of(whole) == body * (2 if twice else 1)
    assert sum(isinstance(e, EndOfMessage) for e in whole) == len(found)
    # What the gateway sends on describes the same request.
    again = heads(RequestReader().feed(render_request_head(head, "198.51.100.7")))[0]
    assert (again.method, again.target, again.chunked) == (head.method, head.target, head.chunked)
    assert again.content_length == head.content_length


@PROPERTY
@given(
    st.sampled_from([200, 201, 404, 500]),
    st.binary(max_size=200),
    st.sampled_from(["length", "chunked", "close"]),
    cuts,
)
def test_valid_responses_pass_through_unchanged_however_split(
    status: int, body: bytes, framing: str, cut: list[int]
) -> None:
    head = b"HTTP/1.1 %d Whatever\r\nServer: test\r\n" % status
    if framing == "length":
        data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        data = head + b"Transfer-Encoding: chunked\r\n\r\n"
        data += (encode_chunk(body) if body else b"") + LAST_CHUNK
    else:
        data = head + b"\r\n" + body
    reader, outs = read_response(b"GET", split_at(data, cut), eof=True)
    assert b"".join(outs) == data
    assert reader.state is ResponseState.DONE
    assert reader.status == status
    assert reader.reusable is (framing != "close")


# --- the fast ways: a head passed on as it came, a reader kept per connection -----------------

FAST_PATH_HEADS = [
    GET,
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nconnection: Keep-Alive\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: [::1]:9000\r\nUser-Agent: curl/8\r\nX-2: 1\r\nX-2: 2\r\n\r\n",
    b"DELETE /item/7 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
]
SLOW_PATH_HEADS = [
    # Two Connection lines: rare, so the fast way cuts one only.
    b"GET / HTTP/1.1\r\nConnection: close\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: timeout=5\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=1.2.3.4\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nClose: named-so-dropped\r\n\r\n",
    UPGRADE,
]


def general_render(head: RequestHead, *args: str) -> bytes:
    """What rendering gives without the head's raw bytes (the general way)."""
    raw, head.raw = head.raw, None
    try:
        return render_request_head(head, *args)
    finally:
        head.raw = raw


@pytest.mark.parametrize("data", FAST_PATH_HEADS)
@pytest.mark.parametrize("proto", ["http", "https"])
def test_head_that_came_whole_renders_the_same_from_its_raw_bytes(data: bytes, proto: str) -> None:
    head = one_request(data)
    assert head.raw is not None
    assert render_request_head(head, "203.0.113.9", proto) == general_render(
        head, "203.0.113.9", proto
    )
    assert render_request_head(head, "203.0.113.9", proto, True) == general_render(
        head, "203.0.113.9", proto, True
    )


@pytest.mark.parametrize("data", SLOW_PATH_HEADS)
def test_head_with_something_to_drop_or_keep_is_rendered_the_general_way(data: bytes) -> None:
    assert one_request(data).raw is None


@pytest.mark.parametrize(
    "pieces",
    [
        bytewise(GET),
        [GET[:20], GET[20:]],
        [b"\r\n" + GET],  # an empty line before it
        [GET + GET],  # pipelined: two heads in one read
        [POST_CL],  # a body came with it
        [GET + b"\r\n\r\n"],  # empty lines after it (its raw bytes once kept them)
        [GET + b"\r\n"],
    ],
    ids=[
        "bytewise",
        "two-reads",
        "after-empty-line",
        "pipelined",
        "with-body",
        "empty-lines-after",
        "empty-line-after",
    ],
)
def test_head_not_alone_in_one_read_has_no_raw_bytes(pieces: list[bytes]) -> None:
    for head in heads(read_requests(b"", pieces)):
        assert head.raw is None


@pytest.mark.parametrize(
    "line", [b"Connection: close", b"connection:close", b"CONNECTION:  Keep-Alive"]
)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_connection_lines_are_cut_from_raw_bytes_only(line: bytes, where: str) -> None:
    lines = [b"Host: a", b"Accept: */*", b"X-Connection: kept"]
    lines.insert({"first": 0, "middle": 1, "last": 3}[where], line)
    head = one_request(b"GET / HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n")
    assert head.raw is not None
    out = render_request_head(head, "203.0.113.9")
    assert header(out, b"connection") == []
    assert header(out, b"accept") == [b"*/*"]
    assert header(out, b"x-connection") == [b"kept"]
    assert out == general_render(head, "203.0.113.9")
    # The parsed head keeps what came.
    assert header(head, b"connection") == [line.partition(b":")[2].strip()]


def test_one_reader_frames_a_series_of_responses() -> None:
    """Warm reuse: the reader (and its parser, when it can) carries on to the next response."""
    reader = ResponseReader()
    series = [
        (b"GET", OK_CL),
        (b"GET", OK_CHUNKED),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"),  # a body it will not send
        (b"GET", OK_CL),
        (b"POST", b"HTTP/1.1 100 Continue\r\n\r\n" + OK_CL),
        (b"GET", OK_CL),
    ]
    for method, response in series:
        reader.expect(method)
        assert reader.feed(response) == response, method
        assert reader.state is ResponseState.DONE
        assert reader.reusable is True
        assert reader.sent_bytes == len(response)


def test_reader_after_a_close_delimited_response_is_not_reused_wrongly() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    reader.feed(b"HTTP/1.1 200 OK\r\n\r\nstream")
    assert reader.close_delimited is True
    reader.feed_eof()
    assert reader.reusable is False  # the connection closes; the exchange never re-arms it


@pytest.mark.parametrize(
    ("response", "chunked", "close_delimited"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False, False),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", True, False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", True, False),
        (b"HTTP/1.1 200 OK\r\nX-Content-Length: 2\r\n\r\n", False, True),
        (b"HTTP/1.1 200 OK\r\nX-Note: chunked\r\n\r\n", False, True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, False),
        (b"HTTP/1.1 100 Continue\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", False, True),
    ],
)
def test_response_framing_is_read_off_the_final_head(
    response: bytes, chunked: bool, close_delimited: bool
) -> None:
    for pieces in ([response], bytewise(response)):
        reader = ResponseReader(b"GET")
        for piece in pieces:
            reader.feed(piece)
        assert reader.state is not ResponseState.HEAD
        assert reader.caller_may_continue is True
        assert reader._chunked is chunked
        assert reader.close_delimited is close_delimited
