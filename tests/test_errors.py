"""Every failure a caller can meet has its own status, X-Revgw-Error code and plain-text body.

What the caller sees: status, ``X-Revgw-Error``, a ``text/plain`` body that
names the tunnel and says what to do. What the operator sees: one log line
per failure on the gateway, never a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from conftest import TOKEN, ClientFactory, GatewayFactory
from helpers import Connection, Response, get
from revgw import Gateway
from revgw import _handshake as hs
from revgw._address import peer_of

# --- helpers ---------------------------------------------------------------------------


def assert_error(response: Response, status: int, code: str, *phrases: str) -> None:
    """A gateway error answer: status, machine-readable code, plain text saying what happened."""
    assert response.status == status, response
    assert response.header("x-revgw-error") == code
    assert (response.header("content-type") or "").startswith("text/plain")
    assert int(response.header("content-length") or -1) == len(response.body)
    for phrase in phrases:
        assert phrase in response.text, response.text


def gateway_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name in ("revgw.gateway", "revgw.access")]


def assert_logged_once(caplog: pytest.LogCaptureFixture, status: int, *why: str) -> None:
    """One access line with the status; the reason (if the gateway adds one) once; no traceback.

    ``why``: words of the single revgw.gateway warning that explains the failure,
    or nothing when the access line alone tells it (tunnel offline, 404, ...).
    """
    records = gateway_records(caplog)
    assert all(r.exc_info is None for r in records), [r.getMessage() for r in records]
    assert all(r.levelno < logging.ERROR for r in records), [r.getMessage() for r in records]
    access = [r.getMessage() for r in records if r.name == "revgw.access"]
    assert len(access) == 1, access
    assert f'" {status} ' in access[0], access
    warnings = [
        r.getMessage()
        for r in records
        if r.name == "revgw.gateway" and r.levelno >= logging.WARNING
    ]
    if why:
        assert len(warnings) == 1, warnings
        for word in why:
            assert word in warnings[0], warnings
    else:
        assert warnings == [], warnings


Answer = Callable[[bytes], Awaitable[bytes | None]]


async def serve_requests(stream: SocketStream, answer: Answer) -> None:
    """Answer body-less requests in order until the peer closes.

    ``answer(request_line)`` returns the bytes to send back, or None to hang:
    then nothing more is sent and the connection is read until it ends.
    """
    buffer = b""
    try:
        while True:
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive()
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            reply = await answer(head.partition(b"\r\n")[0])
            if reply is None:
                while True:
                    await stream.receive()
            await stream.send(reply)
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        pass


@asynccontextmanager
async def tcp_server(handler: Callable[[SocketStream], Awaitable[None]]) -> AsyncIterator[str]:
    """A tiny private server on a free port, each connection handled by ``handler``.

    On exit it waits (bounded) until every connection has ended on its own, so
    the revgw client's side of each one was closed, not left to the garbage
    collector.
    """
    active = 0
    idle = anyio.Event()

    async def handle(stream: SocketStream) -> None:
        nonlocal active, idle
        active += 1
        try:
            async with stream:
                await handler(stream)
        finally:
            active -= 1
            if not active:
                idle.set()
                idle = anyio.Event()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield peer_of(listener.extra(SocketAttribute.local_address))
        with anyio.fail_after(5):
            while active:
                await idle.wait()
        tg.cancel_scope.cancel()


async def read_to_end(stream: SocketStream) -> None:
    """Read and drop until the peer closes (then the client's side is gone too)."""
    try:
        while True:
            await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        pass


async def read_head(stream: SocketStream) -> None:
    """Read until the end of the request head (the tests' requests have no body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()


async def answer_garbage(stream: SocketStream) -> None:
    await read_head(stream)  # read first: closing on unread bytes would reset
    await stream.send(b"garbage\r\n\r\n")
    await stream.send_eof()
    await read_to_end(stream)


async def close_silently(stream: SocketStream) -> None:
    """Take the request, then end the connection without a byte of answer."""
    await read_head(stream)
    await stream.send_eof()
    await read_to_end(stream)


async def pong_or_hang(request_line: bytes) -> bytes | None:
    """``/slow`` never gets an answer; anything else gets ``pong`` (keep-alive)."""
    if b" /slow" in request_line:
        return None
    return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong"


def close_leftover_transports() -> list[str]:
    """Close every transport of this loop still open once all roles have exited; name them.

    Every role closes its connections on exit; one left open would only warn
    (ResourceWarning) when garbage-collected, in whatever test runs then.
    """
    loop = asyncio.get_running_loop()
    leftovers = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, asyncio.Transport)
        and getattr(obj, "_loop", None) is loop
        and not obj.is_closing()
    ]
    for transport in leftovers:
        transport.close()
    return [repr(t) for t in leftovers]


def closed_port() -> str:
    """An address on which nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return peer_of(sock.getsockname())


class RawTunnel:
    """One tunnel connection dialled by hand: a client that can never dial a second one.

    The real client re-dials as soon as a connection is paired, so its pool
    cannot run dry on purpose; this one makes "every connection busy" exact.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.challenge: hs.Challenge
        self.hello: hs.Hello

    @classmethod
    async def dial(
        cls, gateway: Gateway, tunnel: str = "default", finish: bool = True
    ) -> RawTunnel:
        """Connect and authenticate; with ``finish=False`` stop before sending AUTH."""
        host, _, port = gateway.tunnel_address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        raw = cls(reader, writer)
        with anyio.fail_after(5):
            raw.challenge = hs.parse_challenge((await reader.readuntil(b"\r\n"))[:-2])
        raw.hello = hs.make_hello(TOKEN, raw.challenge, tunnel, "raw-client", ())
        if finish:
            raw.finish()
            await raw.read_ready()
        return raw

    def finish(self) -> None:
        """Send AUTH (at once: no await between this and the caller's next step)."""
        self.writer.write(self.hello.line())

    async def read_ready(self) -> None:
        with anyio.fail_after(5):
            line = await self.reader.readuntil(b"\r\n")
        hs.check_verdict(TOKEN, self.challenge, self.hello, line[:-2])

    async def wait_start(self) -> bytes:
        """Wait until the gateway pairs this connection with a request; return the START line."""
        with anyio.fail_after(5):
            while True:
                line = await self.reader.readuntil(b"\r\n")
                if line == hs.PING:
                    self.writer.write(hs.PONG)
                else:
                    return line

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll for an effect inside the gateway (it noticed a client leave or a caller queue).

    Polling is only for such effects of other parties; readiness uses wait_ready().
    """
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - an outside effect, no event to wait on
            await anyio.sleep(0.01)


# --- 503: the pool is exhausted, or the tunnel has no client -----------------------------


async def test_exhausted_pool_answers_503_no_free_connection_with_retry_after(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway(pool_wait=0.3, heartbeat=30) as gw:
        raw = await RawTunnel.dial(gw)
        busy = await Connection.open(gw.address)
        await busy.send(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await raw.wait_start()).startswith(b"START ")
        caplog.clear()
        response = await get(gw.address, "/ping")
        assert_error(
            response,
            503,
            "no-free-connection",
            "tunnel 'default'",
            "no free connection within 0.3 s",
            "--pool",
        )
        assert response.header("retry-after") == "1"
        assert_logged_once(caplog, 503)
        assert gw.registry.tunnels["default"].waiting_count == 0
        await busy.close()
        await raw.close()


async def test_gateway_without_client_answers_503_tunnel_offline_with_a_hint(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    response = await get(gateway.address, "/")
    assert_error(
        response,
        503,
        "tunnel-offline",
        "tunnel 'default' is offline",
        "revgw client",
        "--tunnel default",
    )
    assert response.header("retry-after") == "5"
    assert_logged_once(caplog, 503)


async def test_named_tunnel_whose_client_left_is_offline_not_routed_to_the_default(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway() as gw, make_client(gw):
        async with make_client(gw, tunnel="alpha", host=("a.test",), client_id="alpha-1"):
            assert gw.registry.tunnels["alpha"].online
        # the gateway notices the client's connections close
        await wait_until(lambda: not gw.registry.tunnels["alpha"].online)
        caplog.clear()
        response = await get(gw.address, "/ping", host="a.test")
        assert_error(response, 503, "tunnel-offline", "tunnel 'alpha' is offline", "revgw client")
        assert_logged_once(caplog, 503)
        # the default tunnel still serves every other Host
        assert (await get(gw.address, "/ping", host="other.test")).body == b"pong"


async def test_named_tunnel_is_offline_once_its_client_left_even_after_serving(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with make_gateway(warm_timeout=30) as gw, make_client(gw):
        async with make_client(gw, tunnel="alpha", host=("a.test",), client_id="alpha-1"):
            assert (await get(gw.address, "/ping", host="a.test")).body == b"pong"
        # the gateway notices the client's connections close, the warm one included
        await wait_until(lambda: not gw.registry.tunnels["alpha"].online)
        response = await get(gw.address, "/ping", host="a.test")
        assert_error(response, 503, "tunnel-offline", "tunnel 'alpha' is offline")


async def test_waiters_get_503_offline_when_the_last_client_leaves(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway(pool_wait=30, heartbeat=30) as gw:
        tunnel = gw.registry.tunnels["default"]
        raw = await RawTunnel.dial(gw)
        busy = await Connection.open(gw.address)
        await busy.send(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
        await raw.wait_start()
        waiting = [await Connection.open(gw.address) for _ in range(2)]
        for conn in waiting:
            await conn.send(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: tunnel.waiting_count == 2)  # both queued at the gateway
        await raw.close()  # the only client leaves
        with anyio.fail_after(5):  # far sooner than pool_wait
            answers = [await conn.read_response() for conn in [busy, *waiting]]
        for response in answers:
            assert_error(response, 503, "tunnel-offline", "tunnel 'default' is offline")
        assert tunnel.waiting_count == 0
        records = gateway_records(caplog)
        assert all(r.exc_info is None for r in records)
        for conn in [busy, *waiting]:
            await conn.close()


async def test_without_default_tunnel_an_unclaimed_host_gets_404_no_tunnel(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway(default_tunnel="") as gw:
        response = await get(gw.address, "/ping", host="nowhere.test")
        assert_error(
            response,
            404,
            "no-tunnel",
            "no tunnel serves host 'nowhere.test'",
            "--host nowhere.test",
        )
        assert response.header("retry-after") is None
        assert_logged_once(caplog, 404)


# --- 502/504: the private server fails -----------------------------------------------------


async def test_private_server_refusing_the_client_gives_502_upstream_unreachable(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    target = closed_port()
    async with make_gateway() as gw, make_client(gw, target=target):
        caplog.clear()
        response = await get(gw.address, "/ping")
        assert_error(
            response,
            502,
            "upstream-unreachable",
            "the revgw client could not connect to the private server",
            target,
        )
        assert_logged_once(caplog, 502)
        client_warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "revgw.client" and r.levelno == logging.WARNING
        ]
        assert len(client_warnings) == 1
        assert "cannot reach the private server" in client_warnings[0]


async def test_client_closes_the_connection_it_answered_502_on(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """No socket outlives the roles after the client answered 502 itself."""
    async with make_gateway() as gw, make_client(gw, target=closed_port()):
        response = await get(gw.address, "/ping")
        assert response.header("x-revgw-error") == "upstream-unreachable"
    assert close_leftover_transports() == []


async def test_private_server_answering_garbage_gives_502_bad_upstream_response(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with (
        tcp_server(answer_garbage) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        caplog.clear()
        response = await get(gw.address, "/ping")
        assert_error(response, 502, "bad-upstream-response", "not valid HTTP")
        assert_logged_once(caplog, 502, "502", "not valid HTTP")


async def test_private_server_closing_without_answer_gives_502_after_one_retry(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    arrived = 0

    async def count_and_close(stream: SocketStream) -> None:
        nonlocal arrived
        arrived += 1
        await close_silently(stream)

    async with (
        tcp_server(count_and_close) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        caplog.clear()
        response = await get(gw.address, "/ping")
        assert_error(response, 502, "bad-upstream-response")
        assert arrived == 2  # the first try and the one retry of an idempotent GET
        assert_logged_once(caplog, 502, "502")
        retries = [r.getMessage() for r in caplog.records if "retrying once" in r.getMessage()]
        assert len(retries) == 1


async def test_post_to_a_server_closing_without_answer_is_not_retried(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    arrived = 0

    async def count_and_close(stream: SocketStream) -> None:
        nonlocal arrived
        arrived += 1
        data = b""
        while not data.endswith(b"\r\n\r\nonce"):  # the head and its body
            data += await stream.receive()
        await stream.send_eof()
        await read_to_end(stream)

    async with (
        tcp_server(count_and_close) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        conn = await Connection.open(gw.address)
        response = await conn.request("POST", "/echo", body=b"once")
        await conn.close()
        assert_error(response, 502, "bad-upstream-response")
        assert arrived == 1


async def test_too_slow_private_server_gives_504_and_the_next_request_works(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")

    async def handler(stream: SocketStream) -> None:
        await serve_requests(stream, pong_or_hang)

    async with (
        tcp_server(handler) as target,
        make_gateway(upstream_timeout=0.3) as gw,
        make_client(gw, target=target),
    ):
        caplog.clear()
        response = await get(gw.address, "/slow")
        assert_error(
            response,
            504,
            "upstream-timeout",
            "the private server behind tunnel 'default' did not answer within 0.3 s",
        )
        assert_logged_once(caplog, 504, "504", "did not answer")
        after = await get(gw.address, "/ping")
        assert after.status == 200
        assert after.body == b"pong"


async def test_caller_leaving_as_a_connection_frees_up_sends_nothing_upstream(
    make_gateway: GatewayFactory,
) -> None:
    """A caller that gave up does not get its request sent; the connection goes to the next."""
    async with make_gateway(pool_wait=30, heartbeat=30) as gw:
        tunnel = gw.registry.tunnels["default"]
        first = await RawTunnel.dial(gw)
        busy = await Connection.open(gw.address)
        await busy.send(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
        await first.wait_start()
        # a caller waits in line, on a plain socket so that it can reset at once
        host, _, port = gw.address.rpartition(":")
        leaver = socket.create_connection((host, int(port)))
        leaver.sendall(b"GET /gave-up HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: tunnel.waiting_count == 1)  # queued at the gateway
        # the waiting caller resets in the very moment a second tunnel connection
        # completes its handshake: the gateway reads both in one loop iteration
        second = await RawTunnel.dial(gw, finish=False)
        leaver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        leaver.close()
        second.finish()
        # the next caller is served by that connection, with its own request
        nxt = await Connection.open(gw.address)
        await nxt.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        await second.read_ready()
        await second.wait_start()
        head = await second.reader.readuntil(b"\r\n")
        assert head.startswith(b"GET /next "), head
        for conn in (busy, nxt):
            await conn.close()
        for raw in (first, second):
            await raw.close()
