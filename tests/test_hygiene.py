"""Header hygiene (issue 5, item 5): smuggling shapes, hop-by-hop headers, trusted proxies.

Every smuggling shape is refused with 400 by ``RequestReader`` (sans-IO), and
end to end the private server receives not one byte of it. X-Forwarded-* from
a caller are replaced unless the caller is inside ``trusted_proxies``.
"""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ClientFactory, GatewayFactory
from helpers import Connection, Recorder, get, private_server
from revgw import _http as http
from revgw._errors import BadRequest, ConfigError, HTTPError
from revgw._http import (
    Body,
    RequestHead,
    RequestReader,
    ResponseReader,
    TrustedProxies,
    check_headers,
    render_request_head,
)
from revgw._settings import GatewaySettings

H = b"POST / HTTP/1.1\r\nHost: a\r\n"
CHUNKED = H + b"Transfer-Encoding: chunked\r\n\r\n"

# name -> (request bytes, what the 400's message says)
SMUGGLING = {
    "cl-and-te": (
        H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Content-Length",
    ),
    "te-and-cl": (
        H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        "Content-Length",
    ),
    "duplicate-cl-equal": (
        H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "Content-Length",
    ),
    "duplicate-cl-differ": (H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "Content-"),
    "cl-plus": (H + b"Content-Length: +3\r\n\r\nabc", "Content-Length"),
    "cl-list": (H + b"Content-Length: 3, 3\r\n\r\nabc", "Content-Length"),
    "cl-negative": (H + b"Content-Length: -1\r\n\r\n", "Content-Length"),
    "cl-hex": (H + b"Content-Length: 0x3\r\n\r\nabc", "Content-Length"),
    "cl-empty": (H + b"Content-Length: \r\n\r\n", "Content-Length"),
    "cl-overflow": (H + b"Content-Length: 99999999999999999999999\r\n\r\n", "Content-Length"),
    "obs-fold-space": (H + b"X-A: b\r\n c\r\n\r\n", "whitespace"),
    "obs-fold-tab": (H + b"X-A: b\r\n\tc\r\n\r\n", "whitespace"),
    "obs-fold-te": (H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", "header value"),
    "bare-lf-everywhere": (b"GET / HTTP/1.1\nHost: a\n\n", "CRLF"),
    "bare-lf-one-line": (b"GET / HTTP/1.1\r\nHost: a\nX-B: c\r\n\r\n", "CR"),
    "bare-lf-end-of-head": (b"GET / HTTP/1.1\r\nHost: a\r\n\n", "header"),
    "bare-cr": (b"GET / HTTP/1.1\r\nHost: a\rX-B: c\r\n\r\n", "LF"),
    "cr-inside-value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-B: c\rd\r\n\r\n", "LF"),
    "chunk-size-not-hex": (CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n", "chunk size"),
    "chunk-size-negative": (CHUNKED + b"-3\r\nabc\r\n0\r\n\r\n", "chunk size"),
    "chunk-size-0x": (CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n", "chunk size"),
    "chunk-size-overflow": (CHUNKED + b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", "overflow"),
    "chunk-size-space": (CHUNKED + b"3 \r\nabc\r\n0\r\n\r\n", "chunk size"),
    "chunk-size-bare-lf": (CHUNKED + b"3\nabc\r\n0\r\n\r\n", "chunk size"),
    "chunk-data-overrun": (CHUNKED + b"3\r\nabcX0\r\n\r\n", "chunk data"),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", "header token"),
    "space-before-colon-cl": (H + b"Content-Length : 3\r\n\r\nabc", "header"),
    "tab-before-colon": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A\t: b\r\n\r\n", "header token"),
    "te-twice": (
        H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding",
    ),
    "te-chunked-chunked": (H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "Transfer"),
    "te-in-http10": (
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.0",
    ),
    "nul-in-value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", "header value"),
    "space-before-first-header": (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", "space"),
}


def feed_all(reader: RequestReader, data: bytes, byte_by_byte: bool) -> list[object]:
    events: list[object] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    for piece in pieces:
        events += reader.feed(piece)
    return events


# --- smuggling shapes, sans-IO -----------------------------------------------------------


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("data", "says"), SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_shape_is_400_before_any_head_event(
    data: bytes, says: str, byte_by_byte: bool
) -> None:
    reader = RequestReader()
    with pytest.raises(BadRequest) as caught:
        feed_all(reader, data, byte_by_byte)
    assert caught.value.status == 400
    assert caught.value.code == "bad-request"
    assert says.lower() in str(caught.value).lower()
    # Nothing of it is handed on: no head, so no exchange can start. (Dribbled,
    # a chunked head is complete, and forwarded, before its bad chunk line.)
    if not (byte_by_byte and data.startswith(CHUNKED)):
        assert not any(isinstance(e, RequestHead) for e in reader.parsed_before_error)


def test_smuggled_request_after_a_good_one_leaves_only_the_good_one() -> None:
    good = b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"
    reader = RequestReader()
    with pytest.raises(BadRequest):
        reader.feed(good + SMUGGLING["duplicate-cl-equal"][0])
    heads = [e for e in reader.parsed_before_error if isinstance(e, RequestHead)]
    assert [h.target for h in heads] == [b"/ok"]


def test_bad_chunk_in_the_same_read_withholds_its_head_but_not_earlier_requests() -> None:
    good = b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"
    reader = RequestReader()
    with pytest.raises(BadRequest, match="chunk size"):
        reader.feed(good + SMUGGLING["chunk-size-not-hex"][0])
    heads = [e for e in reader.parsed_before_error if isinstance(e, RequestHead)]
    assert [h.target for h in heads] == [b"/ok"]


@pytest.mark.parametrize(
    ("data", "length", "chunked"),
    [
        (H + b"Content-Length: 3 \r\n\r\nabc", 3, False),  # OWS around a value is legal
        (H + b"Content-Length:\t3\r\n\r\nabc", 3, False),
        (H + b"Content-Length: 000003\r\n\r\nabc", 3, False),
        (H + b"Transfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n", None, True),
        (
            H + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
            None,
            True,
        ),
    ],
)
def test_strict_but_legal_framing_is_accepted(
    data: bytes, length: int | None, chunked: bool
) -> None:
    events = RequestReader().feed(data)
    (head,) = [e for e in events if isinstance(e, RequestHead)]
    assert (head.content_length, head.chunked) == (length, chunked)
    assert b"".join(e.data for e in events if isinstance(e, Body)) == b"abc"


LENIENCIES = [
    "lenient_headers",
    "lenient_chunked_length",
    "lenient_transfer_encoding",
    "lenient_optional_lf_after_cr",
    "lenient_optional_cr_before_lf",
    "lenient_optional_crlf_after_chunk",
    "lenient_spaces_after_chunk_size",
]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (SMUGGLING["cl-and-te"][0], "both Content-Length and Transfer-Encoding"),
        (SMUGGLING["te-twice"][0], "more than one Transfer-Encoding"),
        (SMUGGLING["space-before-colon-cl"][0], "invalid header name"),
        (SMUGGLING["nul-in-value"][0], "CR, LF or NUL"),
        (SMUGGLING["te-in-http10"][0], "HTTP/1.0"),
    ],
)
def test_own_checks_hold_even_with_a_lenient_parser(data: bytes, says: str) -> None:
    """revgw's checks do not depend on llhttp being strict where a callback can see."""
    reader = RequestReader()
    reader._parser.set_dangerous_leniencies(**dict.fromkeys(LENIENCIES, True))
    with pytest.raises(BadRequest, match=says):
        reader.feed(data)


# Header lines as a careless or hostile caller might write them.
NAME_BYTES = bytes.maketrans(bytes(range(256)), (b"Ab-_ :\t\x00\r\n" * 26)[:256])
VALUE_BYTES = bytes.maketrans(bytes(range(256)), (b"ab ,\t\x00\r\n\x7f\xff" * 26)[:256])
RISKY_NAME = st.binary(max_size=8).map(lambda b: b.translate(NAME_BYTES)) | st.sampled_from(
    [b"Host", b"X-A", b"X A", b" X", b"X:", b""]
)
RISKY_VALUE = st.binary(max_size=8).map(lambda b: b.translate(VALUE_BYTES))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(RISKY_NAME, RISKY_VALUE), max_size=5))
def test_no_head_gets_out_with_a_header_the_check_refuses(
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Behind a parser that lets everything by, no head gets out with a header
    that ``check_headers`` refuses."""
    lines = b"".join(n + b":" + v + b"\r\n" for n, v in headers)
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n"
    reader = RequestReader()
    reader._parser.set_dangerous_leniencies(**dict.fromkeys(LENIENCIES, True))
    try:
        events = reader.feed(data)
    except HTTPError:
        return
    for event in events:
        if isinstance(event, RequestHead):
            check_headers(event.headers)  # raises if one got through unchecked


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        (b"X-A ", b"b", "invalid header name"),
        (b" X-A", b"b", "invalid header name"),
        (b"X-A", b"b\r\nX-Evil: 1", "CR, LF or NUL"),
        (b"X-A", b"b\nc", "CR, LF or NUL"),
        (b"X-A", b"b\rc", "CR, LF or NUL"),
        (b"X-A", b"b\x00c", "CR, LF or NUL"),
        (b"X:A", b"b", "invalid header name"),
        (b"", b"b", "invalid header name"),
    ],
)
def test_header_check_refuses_what_a_strict_parser_never_passes(
    name: bytes, value: bytes, says: str
) -> None:
    for headers in ([(name, value)], [(b"Host", b"a"), (name, value), (b"X-B", b"c")]):
        with pytest.raises(BadRequest, match=says):
            check_headers(headers)


def test_header_names_remembered_are_bounded_and_only_good_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller inventing names cannot grow the gateway's memory of them, nor slip one by."""
    monkeypatch.setattr(http, "_NAMES", {})
    monkeypatch.setattr(http, "MAX_NAMES", 10)
    for number in range(50):
        RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-%d: 1\r\n\r\n" % number)
    long_name = b"X-" + b"n" * 100
    RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + long_name + b": 1\r\n\r\n")
    assert len(http._NAMES) == 10
    assert long_name not in http._NAMES
    for _ in range(2):  # refused each time, never remembered
        with pytest.raises(BadRequest, match="invalid header name"):
            check_headers([(b"Host", b"a"), (b"X A", b"b")])
    assert b"X A" not in http._NAMES
    assert http._NAMES[b"Host"] == b"host"  # what the reader makes of it


def test_header_check_passes_good_headers() -> None:
    check_headers([])
    check_headers([(b"Host", b"a"), (b"X-Empty", b""), (b"Accept", b"text/html, */*;q=0.8\t")])


def test_content_length_of_19_digits_is_refused_not_overflowed() -> None:
    with pytest.raises(BadRequest, match="Content-Length"):
        RequestReader().feed(H + b"Content-Length: 1000000000000000000\r\n\r\n")


# --- hop-by-hop headers (RFC 9110 7.6.1) ------------------------------------------------------


def one_head(data: bytes) -> RequestHead:
    (head,) = [e for e in RequestReader().feed(data) if isinstance(e, RequestHead)]
    return head


def header(out: bytes, name: str) -> list[bytes]:
    prefix = name.lower().encode() + b":"
    return [
        line.partition(b":")[2].strip()
        for line in out.split(b"\r\n")
        if line.lower().startswith(prefix)
    ]


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    ],
)
def test_each_hop_by_hop_header_is_dropped(name: str) -> None:
    value = "chunked" if name == "Transfer-Encoding" else "x"
    body = b"0\r\n\r\n" if name == "Transfer-Encoding" else b""
    data = b"POST / HTTP/1.1\r\nHost: a\r\n%s: %s\r\nX-Kept: 1\r\n\r\n" % (
        name.encode(),
        value.encode(),
    )
    out = render_request_head(one_head(data + body), "192.0.2.1")
    if name == "Transfer-Encoding":  # re-stated by the gateway for its own hop
        assert header(out, name) == [b"chunked"]
    else:
        assert header(out, name) == []
    assert header(out, "X-Kept") == [b"1"]


def test_headers_named_in_any_connection_header_are_dropped_case_insensitively() -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-One\r\nconnection: x-TWO , keep-alive\r\n"
        b"x-one: 1\r\nX-Two: 2\r\nX-Three: 3\r\n\r\n"
    )
    out = render_request_head(one_head(data), "192.0.2.1")
    assert header(out, "X-One") == header(out, "X-Two") == []
    assert header(out, "X-Three") == [b"3"]


def test_connection_cannot_make_the_gateway_drop_its_own_forwarding_headers() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Forwarded-For, X-Forwarded-Proto\r\n\r\n"
    out = render_request_head(one_head(data), "192.0.2.1")
    assert header(out, "X-Forwarded-For") == [b"192.0.2.1"]
    assert header(out, "X-Forwarded-Proto") == [b"http"]


def test_response_headers_pass_through_unchanged() -> None:
    """Responses are the private server's word to its caller: passed on byte for byte."""
    response = (
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 10.1.1.1\r\n"
        b"Trailer: X-T\r\nContent-Length: 2\r\n\r\nok"
    )
    assert ResponseReader(b"GET").feed(response) == response


# --- trusted proxies, sans-IO ----------------------------------------------------------------


SPOOFED = (
    b"GET / HTTP/1.1\r\nHost: gw.example\r\n"
    b"X-Forwarded-For: 198.51.100.1, 10.0.0.5\r\nX-Forwarded-For: 10.0.0.6\r\n"
    b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example\r\n"
    b"Forwarded: for=198.51.100.1\r\n\r\n"
)


def test_untrusted_caller_forwarding_headers_are_replaced() -> None:
    out = render_request_head(one_head(SPOOFED), "203.0.113.9")
    assert header(out, "X-Forwarded-For") == [b"203.0.113.9"]
    assert header(out, "X-Forwarded-Proto") == [b"http"]
    assert header(out, "X-Forwarded-Host") == [b"gw.example"]
    assert header(out, "Forwarded") == []


def test_trusted_proxy_forwarding_headers_are_kept_and_appended_to() -> None:
    out = render_request_head(one_head(SPOOFED), "10.0.0.7", trusted=True)
    assert header(out, "X-Forwarded-For") == [b"198.51.100.1, 10.0.0.5, 10.0.0.6, 10.0.0.7"]
    assert header(out, "X-Forwarded-Proto") == [b"https"]
    assert header(out, "X-Forwarded-Host") == [b"app.example"]
    assert header(out, "Forwarded") == [b"for=198.51.100.1"]


def test_trusted_proxy_without_forwarding_headers_gets_the_gateways() -> None:
    out = render_request_head(
        one_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), "10.0.0.7", "https", True
    )
    assert header(out, "X-Forwarded-For") == [b"10.0.0.7"]
    assert header(out, "X-Forwarded-Proto") == [b"https"]
    assert header(out, "X-Forwarded-Host") == [b"a"]


def test_trusted_proxy_forwarding_header_named_in_connection_is_still_dropped() -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Forwarded-Proto\r\n"
        b"X-Forwarded-Proto: https\r\n\r\n"
    )
    out = render_request_head(one_head(data), "10.0.0.7", trusted=True)
    assert header(out, "X-Forwarded-Proto") == [b"http"]


@pytest.mark.parametrize(
    ("ip", "inside"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("::1", True),
        ("::ffff:10.0.0.1", True),  # a dual-stack socket's view of an IPv4 caller
        ("2001:db8::1", False),
        ("unknown", False),
        ("", False),
    ],
)
def test_trusted_proxies_membership(ip: str, inside: bool) -> None:
    trusted = TrustedProxies(["127.0.0.0/8", "10.0.0.0/8", "::1"])
    assert (ip in trusted) is inside


def test_no_trusted_proxies_trusts_nobody_and_is_parsed_once() -> None:
    assert "127.0.0.1" not in TrustedProxies.of(())
    assert TrustedProxies.of(("10.0.0.0/8",)) is TrustedProxies.of(("10.0.0.0/8",))


def test_trusted_proxies_setting_is_checked_and_normalised() -> None:
    settings = GatewaySettings(trusted_proxies=(" 127.0.0.1", "10.0.0.0/8", "", "::1"))
    assert settings.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8", "::1/128")
    assert GatewaySettings().trusted_proxies == ()
    for bad, says in [("10.0.0.1/8", "host bits set"), ("nope", "nope"), ("1.2.3.4/33", "33")]:
        with pytest.raises(ConfigError, match=says) as caught:
            GatewaySettings(trusted_proxies=(bad,))
        assert "--trusted-proxies" in str(caught.value)


# --- end to end: a recording private server ---------------------------------------------------


async def only_a_good_request_arrives(address: str, recorder: Recorder) -> None:
    """After the refused requests the path still works: a good one arrives, and alone."""
    ok = await get(address, "/after")
    assert ok.status == 200
    assert recorder.received.split(b"\r\n")[0] == b"GET /after HTTP/1.1"
    assert len(recorder.heads) == 1


E2E_SHAPES = [
    "cl-and-te",
    "duplicate-cl-equal",
    "cl-plus",
    "obs-fold-space",
    "bare-lf-one-line",
    "bare-cr",
    "chunk-size-not-hex",
    "chunk-size-overflow",
    "space-before-colon",
    "te-in-http10",
]


async def test_empty_lines_after_a_request_never_split_its_head(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """A request and empty lines in one read: the server gets one whole head, then the next.

    The head passed on as it came once kept the empty lines, and the gateway's
    X-Forwarded-* lines went after them: the private server read a second,
    bogus request, whose answer would have waited in the pooled connection for
    the next caller.
    """
    recorder = Recorder()
    async with (
        private_server(recorder) as target,
        make_gateway() as gw,
        make_client(gw, target=target, pool=1),
    ):
        conn = await Connection.open(gw.address)
        try:
            await conn.send(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n\r\n\r\n")
            assert (await conn.read_response()).body == b"ok"
            second = await conn.request(target="/second")
            assert second.body == b"ok"
        finally:
            await conn.close()
    assert [head.split(b" ")[1] for head in recorder.heads] == [b"/first", b"/second"]
    assert all(b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in head for head in recorder.heads)


async def test_smuggling_shapes_never_reach_the_private_server(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    recorder = Recorder()
    async with (
        private_server(recorder) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        for name in E2E_SHAPES:
            conn = await Connection.open(gw.address)
            try:
                await conn.send(SMUGGLING[name][0])
                response = await conn.read_response()
                assert (response.status, response.header("X-Revgw-Error")) == (
                    400,
                    "bad-request",
                ), name
                assert response.header("Connection") == "close", name
                assert await conn.closed_by_peer(), name
            finally:
                await conn.close()
        # The path works: a good request still arrives, and alone.
        await only_a_good_request_arrives(gw.address, recorder)


async def test_bad_chunk_after_a_forwarded_head_stops_the_body_there(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Streamed: the head went on before the bad chunk line came; that line never does."""
    recorder = Recorder()
    async with (
        private_server(recorder) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        conn = await Connection.open(gw.address)
        try:
            await conn.send(CHUNKED)
            with anyio.fail_after(10):
                await recorder.got_head.wait()
            await conn.send(b"zz\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
            response = await conn.read_response()
            assert await conn.closed_by_peer()
        finally:
            await conn.close()
    assert response.status in (200, 400)
    assert b"zz" not in recorder.received
    assert b"/smuggled" not in recorder.received


async def test_head_level_smuggling_shapes_send_the_private_server_nothing(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    recorder = Recorder()
    shapes = [n for n in E2E_SHAPES if not n.startswith("chunk-")]
    async with (
        private_server(recorder) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        for name in shapes:
            conn = await Connection.open(gw.address)
            try:
                await conn.send(SMUGGLING[name][0])
                assert (await conn.read_response()).status == 400, name
            finally:
                await conn.close()
        await only_a_good_request_arrives(gw.address, recorder)


async def test_forwarding_headers_kept_only_from_a_trusted_proxy(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The test caller is 127.0.0.1: trusted by one gateway, not by the other."""
    spoofed = {
        "X-Forwarded-For": "198.51.100.1",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "app.example",
    }
    seen: dict[str, list[bytes]] = {}
    for trusted in ((), ("127.0.0.0/8",)):
        recorder = Recorder()
        async with (
            private_server(recorder) as target,
            make_gateway(trusted_proxies=trusted) as gw,
            make_client(gw, target=target),
        ):
            response = await get(gw.address, "/who", headers=spoofed)
        assert response.status == 200
        (head,) = recorder.heads
        for name in spoofed:
            seen[f"{name} {'trusted' if trusted else 'untrusted'}"] = header(head, name)
    assert seen == {
        "X-Forwarded-For untrusted": [b"127.0.0.1"],
        "X-Forwarded-Proto untrusted": [b"http"],
        "X-Forwarded-Host untrusted": [b"test.local"],
        "X-Forwarded-For trusted": [b"198.51.100.1, 127.0.0.1"],
        "X-Forwarded-Proto trusted": [b"https"],
        "X-Forwarded-Host trusted": [b"app.example"],
    }


def test_http_errors_here_are_bad_requests() -> None:
    """Every shape above is a plain 400, not a new error code."""
    for data, _ in SMUGGLING.values():
        try:
            RequestReader().feed(data)
        except HTTPError as exc:
            assert type(exc) is BadRequest
