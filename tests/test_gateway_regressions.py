"""Gateway bugs found by the benchmark, each pinned by a test before its fix."""

from __future__ import annotations

import asyncio
import socket

from conftest import ClientFactory, GatewayFactory
from helpers import Connection, fake_client, get


async def test_a_caller_asking_to_close_is_told_the_connection_closes(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The server says keep-alive (to the gateway); the caller must read Connection: close."""
    async with make_gateway() as gw, make_client(gw):
        conn = await Connection.open(gw.address)
        response = await conn.request(target="/ping", headers={"Connection": "close"})
        assert response.status == 200 and response.body == b"pong"
        assert response.header("connection") == "close"
        assert await conn.closed_by_peer()
        await conn.close()


async def test_a_closed_caller_is_let_go_at_once_not_after_the_linger(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Once the caller closes its side too, nothing is left to drain: close now."""
    async with make_gateway() as gw, make_client(gw):
        conn = await Connection.open(gw.address)
        await conn.request(target="/ping", headers={"Connection": "close"})
        assert await conn.closed_by_peer()  # the gateway half-closed after its answer
        sock = conn.writer.get_extra_info("socket")
        sock.shutdown(socket.SHUT_WR)
        for _ in range(50):  # well under the 2 s linger
            if not gw.callers:
                break
            await asyncio.sleep(0.02)
        assert not gw.callers
        await conn.close()


async def one_write_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request with a 30 KB body, head and body in a single write."""
    body = b"b" * 30_000
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def test_a_response_ending_under_backpressure_leaves_a_usable_warm_connection(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Reading paused for a slow caller must not stay paused once the connection is warm.

    The whole response reaches the gateway in one read, which both fills the slow
    caller's buffers (so the gateway pauses the tunnel connection) and ends the
    response (so the connection turns warm) - in that order, in one callback.
    """
    server = await asyncio.start_server(one_write_server, "127.0.0.1", 0)
    target = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with make_gateway(upstream_timeout=3) as gw, make_client(gw, pool=1, target=target):
        tunnel = gw.registry.tunnels["default"]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        host, _, port = gw.address.rpartition(":")
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        slow = Connection(reader, writer)
        for _ in range(250):  # the gateway accepted it
            if gw.callers:
                break
            await asyncio.sleep(0.01)
        # Small buffers on the gateway's side of this caller, so one read's worth
        # of response overflows them: the gateway must apply backpressure.
        (caller,) = gw.callers
        assert caller.transport is not None
        caller.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        caller.transport.set_write_buffer_limits(high=4096)
        await slow.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(250):  # the gateway has the whole response; the caller read nothing
            if tunnel.warm_count:
                break
            await asyncio.sleep(0.02)
        assert tunnel.warm_count == 1
        response = await slow.read_response()
        assert len(response.body) == 30_000
        await slow.close()
        answer = await get(gw.address, "/again")  # takes the warm connection
        assert (answer.status, len(answer.body)) == (200, 30_000)
    server.close()


async def test_a_tunnel_whose_connections_all_upgraded_is_busy_not_offline(
    make_gateway: GatewayFactory,
) -> None:
    """Its client is still connected: a caller waits in line, and is not told 'offline'."""
    async with make_gateway(pool_wait=0.3) as gw:
        reader, writer = await fake_client(gw, "ws-only")  # the tunnel's one connection
        caller = await Connection.open(gw.address)
        await caller.send(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        assert (await reader.readline()).startswith(b"START")
        await reader.readuntil(b"\r\n\r\n")  # the upgrade request, as the server gets it
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        assert (await caller.read_response()).status == 101
        answer = await get(gw.address, "/ping")
        assert answer.status == 503
        assert answer.header("x-revgw-error") == "no-free-connection"
        writer.close()
        await caller.close()
