"""Graceful drain: SIGTERM (or ``drain()``) finishes what is in flight, refuses the rest."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable

import anyio
import pytest

from conftest import TOKEN, ClientFactory, GatewayFactory
from helpers import Connection, Response, fake_client, read_line
from revgw import Client
from revgw import _handshake as hs
from revgw._caller import CallerState
from revgw_examples.server import Server
from test_cli import clean_env, revgw

SLOW = "/slow?ms=1500"


async def until(condition: Callable[[], object], what: str) -> None:
    """Poll state reached on another task's schedule (a bounded loop, not a sleep)."""
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - gateway-side state, no event
            await anyio.sleep(0.01)


async def slow_request(conn: Connection, target: str = SLOW) -> Response:
    try:
        return await conn.request(target=target)
    finally:
        await conn.close()


async def open_slow(address: str, count: int, target: str = SLOW) -> list[asyncio.Task[Response]]:
    conns = [await Connection.open(address) for _ in range(count)]
    return [asyncio.create_task(slow_request(c, target)) for c in conns]


async def answered_with_close(conn: Connection, drain: asyncio.Task[None]) -> None:
    """A request on ``conn`` during the drain gets pong, ``Connection: close``; the drain ends."""
    response = await conn.request(target="/ping")
    assert (response.status, response.body) == (200, b"pong")
    assert response.header("connection") == "close"
    await conn.close()
    with anyio.fail_after(2):
        await drain


# --- sans-IO: the wire line ---------------------------------------------------------------------


def test_drain_line_is_versioned_and_readable() -> None:
    line = hs.drain_line()
    assert line == b"REVGW/1 DRAIN the gateway is stopping\r\n"
    assert hs.is_drain(line[:-2])
    assert hs.is_drain(b"REVGW/1 DRAIN")
    assert not hs.is_drain(b"REVGW/1 DRAINED")
    assert not hs.is_drain(b"REVGW/2 DRAIN x")


# --- the gateway --------------------------------------------------------------------------------


async def test_gateway_drain_finishes_in_flight_and_refuses_new(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "revgw")
    async with make_gateway() as gw, make_client(gw, pool=5):
        idle = await Connection.open(gw.address)
        assert (await idle.request(target="/ping")).status == 200
        tasks = await open_slow(gw.address, 5)
        await until(
            lambda: sum(c.state is CallerState.FORWARDING for c in gw.callers) == 5, "5 paired"
        )
        started = time.monotonic()
        drain = asyncio.create_task(gw.drain(5))
        await until(lambda: gw.draining, "draining")
        with pytest.raises(ConnectionRefusedError):
            await Connection.open(gw.address)
        with pytest.raises(ConnectionRefusedError):
            await Connection.open(gw.tunnel_address)
        assert await idle.closed_by_peer(), "an idle keep-alive caller is closed at once"
        await idle.close()
        responses = await asyncio.gather(*tasks)
        assert [r.status for r in responses] == [200] * 5
        assert all(r.header("connection") == "close" for r in responses)
        with anyio.fail_after(2):
            await drain
        assert 1.0 < time.monotonic() - started < 3.5
        assert not gw.callers
    assert "is draining; re-dialling" in caplog.text  # the client heard DRAIN


async def test_a_caller_that_has_not_sent_its_request_yet_is_answered(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Accepted before the drain, request after it: served, with Connection: close.

    A load balancer connects first and sends once connected; closing such a
    connection as if it were an idle keep-alive one, or sending the idle
    tunnel connections away before its request came, fails a request that the
    balancer cannot send elsewhere (there was no refused connect).
    """
    async with make_gateway() as gw, make_client(gw, pool=2):
        conn = await Connection.open(gw.address)
        await until(lambda: len(gw.callers) == 1, "the caller accepted")
        drain = asyncio.create_task(gw.drain(5))
        await until(lambda: gw.draining, "draining")
        await answered_with_close(conn, drain)


async def test_a_caller_waiting_in_line_is_served_by_a_connection_that_comes_free(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Waiting for a pooled connection when the drain starts: served, not 503.

    The tunnel port is closed, so no new connection can come; the only one
    that can serve the waiting caller is the busy one, when its answer ends.
    Closing it then, as a draining gateway does with a finished connection,
    took the tunnel offline under the waiting caller: 503 tunnel-offline.
    """
    async with make_gateway(max_conns_per_client=1) as gw, make_client(gw, pool=1):
        (busy,) = await open_slow(gw.address, 1, "/slow?ms=500")
        await until(lambda: any(c.state is CallerState.FORWARDING for c in gw.callers), "paired")
        (waiting,) = await open_slow(gw.address, 1, "/ping")
        await until(lambda: any(c.state is CallerState.WAITING for c in gw.callers), "in line")
        drain = asyncio.create_task(gw.drain(5))
        first, second = await asyncio.gather(busy, waiting)
        assert (first.status, first.body) == (200, b"slow")
        assert (second.status, second.body) == (200, b"pong")
        assert second.header("connection") == "close"
        with anyio.fail_after(2):
            await drain


async def test_a_caller_the_kernel_still_holds_is_answered(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Connected, but held by the kernel until its first bytes (TCP_DEFER_ACCEPT): served.

    The gateway has not accepted it when the drain starts; the port stays
    open for it instead of resetting it when its request comes.
    """
    async with make_gateway() as gw, make_client(gw, pool=2):
        conn = await Connection.open(gw.address)
        drain = asyncio.create_task(gw.drain(5))
        await until(lambda: gw.draining, "draining")
        assert not gw.callers  # still the kernel's
        await answered_with_close(conn, drain)


async def test_a_caller_the_kernel_holds_and_that_stays_silent_is_taken_on(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The kernel hands it over within a second of the drain; its late request is served."""
    async with make_gateway() as gw, make_client(gw, pool=2):
        conn = await Connection.open(gw.address)
        started = time.monotonic()
        drain = asyncio.create_task(gw.drain(5))
        await until(lambda: gw.callers, "the kernel handed it over")
        assert time.monotonic() - started < 2.0
        await answered_with_close(conn, drain)
        with pytest.raises(ConnectionRefusedError):  # and the port closed after
            await Connection.open(gw.address)


async def test_a_caller_still_in_the_accept_queue_is_answered(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Connected (by the kernel) but not yet accepted when the port closes: served.

    Closing a listening socket resets the connections queued on it; those
    callers connected fine, so a balancer would not retry them elsewhere.
    """
    async with make_gateway() as gw, make_client(gw, pool=2):
        host, port = gw.address.rsplit(":", 1)
        # A blocking connect from the loop's own thread: the kernel completes it,
        # and the gateway cannot accept it before drain() has closed the port.
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            await gw.drain(5)
            answer = b""
            while chunk := sock.recv(65536):  # the answer, then the gateway's close
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(b"\r\n\r\npong")


async def test_a_silent_caller_holds_the_drain_only_until_its_header_timeout(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The idle tunnel connections wait for first requests, not forever."""
    async with make_gateway(header_timeout=0.5) as gw, make_client(gw, pool=2):
        silent = await Connection.open(gw.address)
        await until(lambda: len(gw.callers) == 1, "the caller accepted")
        started = time.monotonic()
        await gw.drain(5)
        assert time.monotonic() - started < 2.5
        assert await silent.closed_by_peer()
        await silent.close()


async def test_drain_with_nothing_in_flight_returns_at_once(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with make_gateway() as gw, make_client(gw) as client:
        started = time.monotonic()
        await gw.drain(5)
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        await client.drain(5)
        assert time.monotonic() - started < 0.5


async def test_gateway_drain_cuts_what_outlives_the_grace(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with make_gateway() as gw, make_client(gw):
        (task,) = await open_slow(gw.address, 1, "/slow?ms=3000")
        await until(lambda: any(c.state is CallerState.FORWARDING for c in gw.callers), "paired")
        started = time.monotonic()
        await gw.drain(0.5)
        assert time.monotonic() - started < 1.5
        with pytest.raises(ConnectionError), anyio.fail_after(2):
            await task


async def test_idle_tunnel_connection_is_told_drain(make_gateway: GatewayFactory) -> None:
    """What a client (old or new) reads: one DRAIN line, then EOF."""
    async with make_gateway() as gw:
        reader, writer = await fake_client(gw, "raw")
        try:
            await until(lambda: gw.registry.tunnels["default"].online, "joined")
            await gw.drain(1)
            assert hs.is_drain(await read_line(reader))
            assert await reader.read() == b""
        finally:
            writer.close()


# --- the client ---------------------------------------------------------------------------------


async def test_client_drain_finishes_in_flight_and_stops_pairing(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with make_gateway(pool_wait=0.5) as gw, make_client(gw, pool=5) as client:
        tunnel = gw.registry.tunnels["default"]
        tasks = await open_slow(gw.address, 5)
        await until(lambda: sum(len(k.splices) for k in client.keepers) == 5, "5 spliced")
        started = time.monotonic()
        drain = asyncio.create_task(client.drain(5))
        await until(lambda: not tunnel.idle_count, "idle links closed")
        late = await Connection.open(gw.address)
        assert (await late.request(target="/ping")).status == 503  # nobody to pair with
        await late.close()
        responses = await asyncio.gather(*tasks)
        assert [r.status for r in responses] == [200] * 5
        with anyio.fail_after(2):
            await drain  # the gateway dropped the warm connections when told DRAIN
        assert 1.0 < time.monotonic() - started < 3.5
        assert client.idle_count == 0
        await until(lambda: not tunnel.clients, "no connection left, none re-dialled")


async def test_client_drain_cuts_what_outlives_the_grace(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with make_gateway() as gw, make_client(gw) as client:
        (task,) = await open_slow(gw.address, 1, "/slow?ms=3000")
        await until(lambda: client.keepers[0].splices, "spliced")
        started = time.monotonic()
        await client.drain(0.5)
        assert time.monotonic() - started < 1.5
        # The cut tunnel connection sent nothing back: the gateway retries the GET
        # once, finds the tunnel gone, and says so.
        response = await task
        assert (response.status, response.header("x-revgw-error")) == (503, "tunnel-offline")


# --- SIGTERM on the real process --------------------------------------------------------------


async def test_sigterm_drains_the_gateway_process(
    make_client: ClientFactory, server: Server
) -> None:
    args = ["--listen", "127.0.0.1:0", "--tunnel-listen", "127.0.0.1:0", "--token", TOKEN]
    args += ["--admin", "off"]  # never the fixed default admin port: tests run side by side
    async with revgw("gateway", *args, "--grace", "5", env=clean_env()) as proc:
        match = await proc.line(r"callers on (\S+), tunnel clients on (\S+)$")
        public, tunnel = match[1], match[2]
        async with Client(gateway=tunnel, target=server.address, token=TOKEN, pool=3) as client:
            await client.wait_ready()
            tasks = await open_slow(public, 3)
            await until(lambda: len(client.keepers[0].splices) == 3, "3 spliced")
            code, took = await proc.stop(signal.SIGTERM)
            responses = await asyncio.gather(*tasks)
        assert [r.status for r in responses] == [200] * 3
        assert code == 0
        assert 0.5 < took < 4
        assert any(
            "SIGTERM received; stopping once in-flight requests finish" in line for line in proc.err
        )


async def test_sigterm_gateway_cuts_after_grace_and_exits_0(server: Server) -> None:
    args = ["--listen", "127.0.0.1:0", "--tunnel-listen", "127.0.0.1:0", "--token", TOKEN]
    args += ["--admin", "off"]  # never the fixed default admin port: tests run side by side
    async with revgw("gateway", *args, "--grace", "0.5", env=clean_env()) as proc:
        match = await proc.line(r"callers on (\S+), tunnel clients on (\S+)$")
        public, tunnel = match[1], match[2]
        async with Client(gateway=tunnel, target=server.address, token=TOKEN, pool=1) as client:
            await client.wait_ready()
            (task,) = await open_slow(public, 1, "/slow?ms=3000")
            await until(lambda: client.keepers[0].splices, "spliced")
            code, took = await proc.stop(signal.SIGTERM)
            with pytest.raises(ConnectionError):
                await task
        assert code == 0
        assert took < 2
