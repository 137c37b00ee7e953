"""Upgrades end to end: a 101 turns the exchange into a raw two-way splice.

A WebSocket echo with the ``websockets`` package at both ends, raw bytes
around the switch, half-closes, and the tunnel serving on afterwards.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from http import HTTPStatus

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.http11 import Request, Response

from conftest import TOKEN, ClientFactory, GatewayFactory
from helpers import get
from revgw import Client, Gateway
from revgw._address import peer_of

MiB = 1024 * 1024
TIMEOUT = 20  # generous bound for any one step; a hang fails instead of stalling


class EchoServer:
    """A websockets echo server; ``/health`` answers plain HTTP 200 without upgrading."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.close_codes: list[int | None] = []
        self.all_closed = anyio.Event()
        self.server: WsServer | None = None

    async def handler(self, ws: ServerConnection) -> None:
        self.opened += 1
        try:
            with suppress(ConnectionClosedOK):
                async for message in ws:
                    await ws.send(message)
            # The TCP close travels back through both splices before this returns.
            await ws.wait_closed()
            self.close_codes.append(ws.close_code)
        finally:
            self.closed += 1
            if self.closed == self.opened:
                self.all_closed.set()

    @staticmethod
    def process_request(ws: ServerConnection, request: Request) -> Response | None:
        if request.path == "/health":
            return ws.respond(HTTPStatus.OK, "healthy\n")
        return None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        async with serve(
            self.handler,
            "127.0.0.1",
            0,
            process_request=self.process_request,
            max_size=4 * MiB,
            compression=None,
        ) as server:
            self.server = server
            yield peer_of(next(iter(server.sockets)).getsockname())


async def test_websocket_echo_through_the_tunnel(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Text and binary messages, one of 1 MiB, echo through gateway and client; close is clean."""
    echo = EchoServer()
    messages: list[str | bytes] = [
        "hello",
        b"\x00\x01\x02 binary",
        "ünïcödé text",
        os.urandom(MiB),
        "x" * 70_000,
        b"",
        "last",
    ]
    async with (
        echo.running() as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        with anyio.fail_after(TIMEOUT):
            async with connect(
                f"ws://{gw.address}/chat", max_size=4 * MiB, compression=None, proxy=None
            ) as ws:
                for message in messages:
                    await ws.send(message)
                    assert await ws.recv() == message
                # Several in flight at once come back in order.
                for message in messages:
                    await ws.send(message)
                received = [await ws.recv() for _ in messages]
                assert received == messages
            assert ws.close_code == 1000
            # The close went all the way through: the private server's handler ended.
            await echo.all_closed.wait()
    assert echo.opened == 1
    assert echo.close_codes == [1000]


async def test_tunnel_serves_normal_requests_after_a_websocket_closes(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """After a WebSocket session ends, the same tunnel still answers plain HTTP and refills."""
    echo = EchoServer()
    async with (
        echo.running() as target,
        make_gateway() as gw,
        make_client(gw, target=target, pool=2) as client,
    ):
        with anyio.fail_after(TIMEOUT):
            async with connect(f"ws://{gw.address}/", proxy=None) as ws:
                await ws.send("ping")
                assert await ws.recv() == "ping"
            await echo.all_closed.wait()
            # The upgraded connection left the pool for good; the client replaced it.
            await client.wait_ready()
            tunnel = gw.registry.tunnels["default"]
            assert tunnel.idle_count >= 2
            responses = [await get(gw.address, "/health") for _ in range(3)]
            # And another WebSocket session works too.
            async with connect(f"ws://{gw.address}/", proxy=None) as ws:
                await ws.send(b"again")
                assert await ws.recv() == b"again"
    assert [(r.status, r.body) for r in responses] == [(200, b"healthy\n")] * 3
    assert all(r.header("x-revgw-error") is None for r in responses)


async def test_concurrent_websockets_on_a_small_pool(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Ten WebSocket sessions at once through a pool of 2: each gets its own echo."""
    echo = EchoServer()

    async def session(n: int) -> list[str]:
        async with connect(f"ws://{gw.address}/s{n}", proxy=None) as ws:
            got = []
            for i in range(5):
                await ws.send(f"{n}:{i}")
                got.append(str(await ws.recv()))
            return got

    async with (
        echo.running() as target,
        make_gateway() as gw,
        make_client(gw, target=target, pool=2),
    ):
        with anyio.fail_after(TIMEOUT):
            results = await asyncio.gather(*(session(n) for n in range(10)))
    assert results == [[f"{n}:{i}" for i in range(5)] for n in range(10)]


async def test_websocket_to_a_server_that_does_not_upgrade_gets_its_answer(
    chain: Gateway,
) -> None:
    """The demo server has no WebSocket endpoint: the caller sees its 404, not a hang."""
    with anyio.fail_after(TIMEOUT), pytest.raises(InvalidStatus) as caught:
        async with connect(f"ws://{chain.address}/nowhere", proxy=None):
            pass
    assert caught.value.response.status_code == 404
    assert isinstance(caught.value.response.headers, Headers)
    assert "X-Revgw-Error" not in caught.value.response.headers


async def test_websocket_to_an_offline_tunnel_is_503(make_gateway: GatewayFactory) -> None:
    """No client connected: the upgrade request gets the gateway's 503 tunnel-offline."""
    async with make_gateway() as gw:
        with anyio.fail_after(TIMEOUT), pytest.raises(InvalidStatus) as caught:
            async with connect(f"ws://{gw.address}/", proxy=None):
                pass
    response = caught.value.response
    assert response.status_code == 503
    assert response.headers["X-Revgw-Error"] == "tunnel-offline"


# --- raw upgrades: bytes around the switch, half-close ------------------------------------


@asynccontextmanager
async def raw_upgrade_server(
    ended: anyio.Event | None = None, streams: list[SocketStream] | None = None
) -> AsyncIterator[str]:
    """Answers any request with 101, then echoes bytes upper-cased; at EOF says BYE and closes."""

    async def handle(stream: SocketStream) -> None:
        if streams is not None:
            streams.append(stream)
        buffered = BufferedByteReceiveStream(stream)
        try:
            async with stream:
                await shout(stream, buffered)
        except (anyio.BrokenResourceError, OSError):
            pass  # the caller vanished: a test below makes sure we notice
        finally:
            if ended is not None:
                ended.set()

    async def shout(stream: SocketStream, buffered: BufferedByteReceiveStream) -> None:
        await buffered.receive_until(b"\r\n\r\n", 65536)
        await stream.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: shout\r\nConnection: Upgrade\r\n\r\n"
        )
        # Bytes that came with the head sit in the buffer: echo them first.
        if buffered.buffer:
            await stream.send(bytes(buffered.buffer).upper())
            await buffered.receive_exactly(len(buffered.buffer))
        while True:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                break
            await stream.send(data.upper())
        await stream.send(b"BYE")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield peer_of(listener.extra(SocketAttribute.local_address))
        tg.cancel_scope.cancel()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset: the peer notices even if it is not waiting for a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_until(reader: asyncio.StreamReader, wanted: bytes) -> bytes:
    got = b""
    while len(got) < len(wanted):
        data = await reader.read(65536)
        if not data:
            break
        got += data
    return got


async def test_raw_upgrade_carries_early_bytes_both_ways_and_half_close(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Bytes behind the upgrade head arrive; EOF passes both ways; the server has the last word."""
    async with (
        raw_upgrade_server() as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        host, _, port = gw.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            async with asyncio.timeout(TIMEOUT):
                writer.write(
                    b"GET /shout HTTP/1.1\r\nHost: test.local\r\nUpgrade: shout\r\n"
                    b"Connection: Upgrade\r\n\r\nearly bytes;"
                )
                head = await reader.readuntil(b"\r\n\r\n")
                early = await read_until(reader, b"EARLY BYTES;")
                writer.write(b"later bytes")
                later = await read_until(reader, b"LATER BYTES")
                writer.write_eof()  # half-close: the server still has its last word
                rest = await reader.read()  # to EOF
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"upgrade: shout" in head.lower()
    assert early == b"EARLY BYTES;"
    assert later == b"LATER BYTES"
    assert rest == b"BYE"


async def test_caller_vanishing_mid_upgrade_closes_the_private_server_side(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """A caller that drops its upgraded connection: the private server's connection ends too."""
    ended = anyio.Event()
    async with (
        raw_upgrade_server(ended) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        host, _, port = gw.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        async with asyncio.timeout(TIMEOUT):
            writer.write(
                b"GET /shout HTTP/1.1\r\nHost: test.local\r\nUpgrade: shout\r\n"
                b"Connection: Upgrade\r\n\r\nhi"
            )
            await reader.readuntil(b"\r\n\r\n")
            assert await read_until(reader, b"HI") == b"HI"
            writer.transport.abort()  # gone without a goodbye
            await ended.wait()
        # The tunnel goes on serving: a second upgrade works.
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            async with asyncio.timeout(TIMEOUT):
                writer.write(
                    b"GET /shout HTTP/1.1\r\nHost: test.local\r\nUpgrade: shout\r\n"
                    b"Connection: Upgrade\r\n\r\nagain"
                )
                await reader.readuntil(b"\r\n\r\n")
                again = await read_until(reader, b"AGAIN")
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()
    assert again == b"AGAIN"


async def test_private_server_closing_an_upgraded_stream_reaches_the_caller(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The private server says its last bytes and closes: the caller gets them, then EOF."""

    async def goodbye(stream: SocketStream) -> None:
        async with stream:
            await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
            await stream.send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"
                + b"z" * 300_000
            )

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with (
        listener,
        anyio.create_task_group() as tg,
        make_gateway() as gw,
    ):
        tg.start_soon(listener.serve, goodbye)
        target = peer_of(listener.extra(SocketAttribute.local_address))
        async with make_client(gw, target=target):
            host, _, port = gw.address.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                async with asyncio.timeout(TIMEOUT):
                    writer.write(
                        b"GET / HTTP/1.1\r\nHost: test.local\r\nUpgrade: x\r\n"
                        b"Connection: Upgrade\r\n\r\n"
                    )
                    head = await reader.readuntil(b"\r\n\r\n")
                    rest = await reader.read()  # to EOF: the close came through
            finally:
                writer.close()
                with suppress(OSError):
                    await writer.wait_closed()
        tg.cancel_scope.cancel()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert rest == b"z" * 300_000


async def test_caller_eof_sent_before_the_101_still_reaches_the_private_server(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Upgrade head, bytes and FIN all sent at once: the server still sees the EOF and answers."""
    ended = anyio.Event()
    streams: list[SocketStream] = []
    async with (
        raw_upgrade_server(ended, streams) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        host, _, port = gw.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                b"GET /shout HTTP/1.1\r\nHost: test.local\r\nUpgrade: shout\r\n"
                b"Connection: Upgrade\r\n\r\nall at once;"
            )
            writer.write_eof()
            async with asyncio.timeout(TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                assert await read_until(reader, b"ALL AT ONCE;") == b"ALL AT ONCE;"
            # The server answers BYE and closes as soon as it sees the EOF: well
            # within this bound on loopback.
            async with asyncio.timeout(1):
                rest = await reader.read()
        finally:
            # Clean up even when the bug holds: the gateway stops reading a caller
            # after its EOF, so it learns of the reset only by writing to it.
            reset(writer)
            for stream in streams:
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    await stream.send(b"!")
            with anyio.fail_after(5):
                await ended.wait()  # the close reached the server: nothing left half-open
    assert head.startswith(b"HTTP/1.1 101 ")
    assert rest == b"BYE"


async def test_gateway_shutdown_closes_upgraded_connections(make_gateway: GatewayFactory) -> None:
    """Stopping the gateway ends a live upgraded (WebSocket-like) connection for its caller."""
    ended = anyio.Event()

    async def run_client(
        gw: Gateway, target: str, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        async with Client(gateway=gw.tunnel_address, target=target, token=TOKEN, pool=1) as c:
            await c.wait_ready()
            task_status.started()
            await anyio.sleep_forever()

    async with raw_upgrade_server(ended) as target, anyio.create_task_group() as tg:
        async with make_gateway() as gw:
            await tg.start(run_client, gw, target)
            host, _, port = gw.address.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"GET / HTTP/1.1\r\nHost: test.local\r\nUpgrade: shout\r\n"
                b"Connection: Upgrade\r\n\r\nhi"
            )
            async with asyncio.timeout(TIMEOUT):
                await reader.readuntil(b"\r\n\r\n")
                assert await read_until(reader, b"HI") == b"HI"
        try:
            # The gateway is gone; its connections close at once on loopback.
            async with asyncio.timeout(1):
                try:
                    rest = await reader.read()
                except ConnectionResetError:
                    rest = b""
        finally:
            reset(writer)
            with anyio.fail_after(5):
                await ended.wait()  # the close reached the server: nothing left half-open
            tg.cancel_scope.cancel()
    assert rest == b""
