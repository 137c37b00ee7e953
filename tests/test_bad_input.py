"""Bad input on either port costs only the connection that sent it.

A malformed or oversized request gets its 4xx and that connection closes;
a silent or stalled caller is dropped after the header timeout; garbage on
the tunnel port is refused with one warning line. Every other connection,
and the gateway itself, carries on.
"""

from __future__ import annotations

import asyncio
import logging

import anyio
import httptools
import pytest

from conftest import ClientFactory, GatewayFactory
from helpers import Connection, Response, get
from revgw import Gateway
from test_errors import assert_error, tcp_server
from test_routing import named_servers

GOOD = b"GET /ping HTTP/1.1\r\nHost: x.test\r\n\r\n"


def messages(caplog: pytest.LogCaptureFixture, level: int, *words: str) -> list[str]:
    """Gateway log lines at ``level`` or above containing all ``words``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("revgw.") and r.levelno >= level
        if all(word in r.getMessage() for word in words)
    ]


async def responses_until_closed(conn: Connection) -> list[Response]:
    """Every response the gateway sends until it closes, in order.

    (Back-to-back answers often arrive in one read; this keeps them apart.)
    """
    data = b""
    with anyio.fail_after(5):
        while chunk := await conn.reader.read(65536):
            data += chunk
    responses: list[Response] = []
    headers: dict[str, str] = {}

    class Callbacks:
        def on_message_begin(self) -> None:
            headers.clear()

        def on_header(self, name: bytes, value: bytes) -> None:
            headers[name.decode().lower()] = value.decode("latin-1")

        def on_headers_complete(self) -> None:
            responses.append(Response(parser.get_status_code(), dict(headers), b""))

        def on_body(self, body: bytes) -> None:
            responses[-1].body += body

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(data)
    return responses


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- the public port ---------------------------------------------------------------------


async def test_malformed_request_gets_400_and_closes_only_its_own_connection(
    chain: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    busy = await Connection.open(chain.address)
    assert (await busy.request("GET", "/ping")).status == 200
    await busy.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: x.test\r\n\r\n")  # in flight

    bad = await Connection.open(chain.address)
    await bad.send(b"THIS IS NOT HTTP\r\n\r\n")
    response = await bad.read_response()
    assert_error(response, 400, "bad-request")
    assert await bad.closed_by_peer()
    await bad.close()

    # the other caller's request in flight, and its connection, are untouched
    slow = await busy.read_response()
    assert (slow.status, slow.body) == (200, b"slow")
    again = await busy.request("GET", "/ping")
    assert (again.status, again.body) == (200, b"pong")
    await busy.close()
    assert len(messages(caplog, logging.WARNING, "400")) == 1
    assert_no_traceback(caplog)


async def test_garbage_after_a_good_request_gets_400_once_the_good_one_got_200(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    arrivals, (server,) = named_servers("private")
    async with (
        tcp_server(server.handle) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        conn = await Connection.open(gw.address)
        await conn.send(b"GET /hold HTTP/1.1\r\nHost: x.test\r\n\r\n")
        await arrivals.wait_for(1)
        await conn.send(b"NONSENSE\r\n\r\n")  # while the first is at the server
        arrivals.release.set()
        first, second = await responses_until_closed(conn)
        await conn.close()
        assert (first.status, first.body) == (200, b"private")
        assert_error(second, 400, "bad-request")


async def test_pipelined_garbage_in_the_same_read_as_a_good_request_gets_200_then_400(
    chain: Gateway,
) -> None:
    conn = await Connection.open(chain.address)
    await conn.send(GOOD + b"NONSENSE\r\n\r\n")
    answers = await responses_until_closed(conn)
    await conn.close()
    assert [r.status for r in answers] == [200, 400]
    assert answers[0].body == b"pong"
    assert_error(answers[1], 400, "bad-request")


async def test_headers_over_the_limit_get_431(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway(max_header_bytes=2048) as gw, make_client(gw):
        fits = await get(gw.address, "/ping", headers={"X-Pad": "a" * 1000})
        assert fits.status == 200
        conn = await Connection.open(gw.address)
        response = await conn.request("GET", "/ping", headers={"X-Pad": "a" * 3000})
        assert_error(response, 431, "headers-too-large", "2048")
        assert await conn.closed_by_peer()
        await conn.close()
        assert (await get(gw.address, "/ping")).status == 200
    assert len(messages(caplog, logging.WARNING, "431")) == 1
    assert_no_traceback(caplog)


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /ping HTTP/1.1\r\nHost: x.test\r\n"],
    ids=["nothing", "half-a-head"],
)
async def test_caller_that_stalls_before_a_complete_head_is_disconnected(
    make_gateway: GatewayFactory,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    sent: bytes,
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway(header_timeout=0.3) as gw, make_client(gw):
        conn = await Connection.open(gw.address)
        if sent:
            await conn.send(sent)
        assert await conn.closed_by_peer(timeout=5)
        await conn.close()
        lines = messages(caplog, logging.INFO, "sent no complete request in time")
        assert len(lines) == 1
        # the gateway never asked the tunnel for this one, and still serves others
        assert gw.registry.tunnels["default"].idle_count == 2
        assert (await get(gw.address, "/ping")).status == 200
    assert_no_traceback(caplog)


# --- the tunnel port -------------------------------------------------------------------------


async def open_tunnel_port(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to the tunnel port, past the gateway's CHALLENGE line."""
    host, _, port = gateway.tunnel_address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    with anyio.fail_after(5):
        assert (await reader.readuntil(b"\r\n")).startswith(b"REVGW/1 CHALLENGE ")
    return reader, writer


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the gateway still sends before it closes the connection."""
    data = b""
    with anyio.fail_after(5):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionError:
            pass
    return data


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: gateway.test\r\n\r\n",
        b"\x00\xff\x13\x88 random \xfe\xfd bytes\r\n",
        b"A" * 4000,
    ],
    ids=["http-request", "random-bytes", "overlong-line"],
)
async def test_garbage_on_the_tunnel_port_is_closed_with_one_warning(
    make_gateway: GatewayFactory,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    garbage: bytes,
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway() as gw:
        reader, writer = await open_tunnel_port(gw)
        writer.write(garbage)
        answer = await read_until_closed(reader)
        writer.close()
        assert answer.startswith(b"REVGW/1 DENIED")
        warnings = messages(caplog, logging.WARNING, "tunnel port:")
        assert len(warnings) == 1
        assert "broke the handshake" in warnings[0]
        assert_no_traceback(caplog)
        # the gateway goes on serving
        async with make_client(gw):
            response = await get(gw.address, "/ping")
            assert (response.status, response.body) == (200, b"pong")


async def test_silent_connection_on_the_tunnel_port_is_closed_after_the_handshake_timeout(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway(handshake_timeout=0.3) as gw:
        reader, writer = await open_tunnel_port(gw)
        assert await read_until_closed(reader) == b""
        writer.close()
        warnings = messages(caplog, logging.WARNING, "sent no handshake in time")
        assert len(warnings) == 1
        assert len(gw.tunnel_conns) == 0
        async with make_client(gw):
            assert (await get(gw.address, "/ping")).body == b"pong"
    assert_no_traceback(caplog)
