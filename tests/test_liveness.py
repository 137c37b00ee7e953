"""Behaviour 5: dead tunnel connections leave the pool before a request can get one.

A client can die loudly (SIGKILL: the kernel sends FIN) or silently (the
host vanishes: no FIN, no PONG); the gateway can restart, or go silent
itself. In every case requests get an honest answer (200 through a live
client, else 503 tunnel-offline), never a dead connection or a hang, and
the client finds its way back without being restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager

import anyio
import pytest

from conftest import TOKEN, ClientFactory, GatewayFactory, held
from helpers import Connection, FakeGateway, fake_client, get, read_line, split
from revgw import Client, Gateway
from revgw import _handshake as hs
from revgw_examples.server import Server


class LogWatch(logging.Handler):
    """Collects revgw log lines matching a pattern; ``await watch.seen()`` waits for one."""

    def __init__(self, pattern: str) -> None:
        super().__init__(logging.DEBUG)
        self.pattern = re.compile(pattern)
        self.lines: list[str] = []
        self._event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.pattern.search(message):
            self.lines.append(message)
            self._event.set()

    def clear(self) -> None:
        self.lines.clear()
        self._event = asyncio.Event()

    async def seen(self) -> str:
        await self._event.wait()
        return self.lines[0]


@contextmanager
def watch_log(pattern: str) -> Iterator[LogWatch]:
    logger = logging.getLogger("revgw")
    watch = LogWatch(pattern)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(old_level)


@asynccontextmanager
async def client_process(
    gw: Gateway, target: str, pool: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``revgw client`` as a real process (so that it can be SIGKILLed), killed on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVGW_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "revgw",
        "client",
        "--gateway",
        gw.tunnel_address,
        "--target",
        target,
        "--token",
        TOKEN,
        "--pool",
        str(pool),
        "--client-id",
        "doomed",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def until_idle(gw: Gateway, count: int) -> None:
    """Wait for the gateway to hold ``count`` idle connections.

    Bounded poll: this observes another process (the client subprocess)
    filling the pool, which the test has no event for.
    """
    tunnel = gw.registry.tunnels["default"]
    with anyio.fail_after(10):
        while tunnel.idle_count < count:  # noqa: ASYNC110 - another process, no event to await
            await anyio.sleep(0.01)


@asynccontextmanager
async def silent_client(gw: Gateway, client_id: str) -> AsyncIterator[asyncio.StreamReader]:
    """A tunnel connection that authenticates correctly, then never answers a PING.

    This is how a client whose host vanished looks to the gateway: no FIN,
    no PONG, no more bytes at all.
    """
    reader, writer = await fake_client(gw, client_id)
    try:
        yield reader
    finally:
        writer.close()


async def raw_fake_client(gw: Gateway, client_id: str, hosts: tuple[str, ...]) -> socket.socket:
    """Like fake_client, on a bare socket: the test can hang it up at once, FIN or reset."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        with anyio.fail_after(5):
            await loop.sock_connect(sock, split(gw.tunnel_address))
            reader = hs.LineReader()

            async def line() -> bytes:
                while (got := reader.next_line()) is None:
                    data = await loop.sock_recv(sock, 4096)
                    assert data, "the gateway hung up during the handshake"
                    reader.feed(data)
                return got

            challenge = hs.parse_challenge(await line())
            hello = hs.make_hello(TOKEN, challenge, "default", client_id, hosts)
            await loop.sock_sendall(sock, hello.line())
            hs.check_verdict(TOKEN, challenge, hello, await line())
    except BaseException:
        sock.close()
        raise
    return sock


def hang_up(sock: socket.socket, how: str) -> None:
    """End a connection this instant: a FIN, or a reset (linger 0, then close)."""
    if how == "fin":
        sock.shutdown(socket.SHUT_WR)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


# --- a client killed with SIGKILL -------------------------------------------------------------


async def test_killed_client_leaves_the_pool_and_requests_get_503_not_a_dead_connection(
    make_gateway: GatewayFactory, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL a client whose 4 connections idle: the next requests get 503 tunnel-offline."""
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway(pool_wait=5) as gw:
        async with client_process(gw, server.address, pool=4) as process:
            await until_idle(gw, 4)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        for _ in range(5):
            with anyio.fail_after(4):  # less than pool_wait: a wait in line would fail here
                response = await get(gw.address, "/ping")
            assert response.status == 503, response
            assert response.header("x-revgw-error") == "tunnel-offline"
        assert not gw.registry.tunnels["default"].live
    assert any("client doomed left tunnel 'default'" in r.getMessage() for r in caplog.records)


async def test_killed_client_is_never_used_while_another_client_serves(
    make_gateway: GatewayFactory, make_client: ClientFactory, server: Server
) -> None:
    """SIGKILL one of two clients: all 20 requests right after it get 200 from the other."""
    async with make_gateway() as gw, make_client(gw, pool=2):
        async with client_process(gw, server.address, pool=4) as process:
            await until_idle(gw, 6)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        with anyio.fail_after(10):
            responses = await asyncio.gather(*(get(gw.address, "/ping") for _ in range(20)))
        assert [(r.status, r.body) for r in responses] == [(200, b"pong")] * 20
        assert "doomed" not in gw.registry.tunnels["default"].clients


@pytest.mark.parametrize(
    "how",
    [
        "fin",
        "reset",
    ],
)
async def test_request_arriving_with_the_clients_hang_up_is_not_handed_a_dead_connection(
    make_gateway: GatewayFactory, how: str
) -> None:
    """FIN (or reset) on every idle connection and a request, seen in one go: 503, not 502.

    The gateway must drop a connection from the pool the moment it reads EOF,
    not one loop callback later: a request read in between would get it.
    """
    async with make_gateway(default_tunnel="", pool_wait=3) as gw:
        fakes = [await raw_fake_client(gw, "dying", ("app.test",)) for _ in range(2)]
        try:
            conn = await Connection.open(gw.address)
            try:
                # Answered without a tunnel: proves the gateway is reading this caller.
                assert (await conn.request(host="elsewhere.test")).status == 404
                # No await between these: the gateway sees both hang-ups and the
                # request in the same event-loop iteration, hang-ups first.
                for sock in fakes:
                    hang_up(sock, how)
                conn.writer.write(b"GET /ping HTTP/1.1\r\nHost: app.test\r\n\r\n")
                with anyio.fail_after(2):  # less than pool_wait: no waiting in line either
                    response = await conn.read_response()
            finally:
                await conn.close()
        finally:
            for sock in fakes:
                sock.close()
    assert response.status == 503, response
    assert response.header("x-revgw-error") == "tunnel-offline"


# --- a client that dies silently (no FIN) -----------------------------------------------------


async def test_silent_client_is_dropped_after_a_missed_pong_and_callers_get_503(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that stops answering PINGs goes; a caller waiting meanwhile gets 503."""
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway(heartbeat=0.2, pool_wait=5) as gw:
        async with silent_client(gw, "silent-1") as reader:
            assert gw.registry.tunnels["default"].online
            with anyio.fail_after(2):
                assert await read_line(reader) == b"PING"  # now PINGED: out of the pool
            with anyio.fail_after(3):  # ~2 heartbeats; pool_wait (5 s) is not what ends it
                response = await get(gw.address, "/ping")
            assert response.status == 503, response
            assert response.header("x-revgw-error") == "tunnel-offline"
            with anyio.fail_after(2):
                assert await reader.read() == b""  # dropped, and never sent a START
        assert not gw.registry.tunnels["default"].online
    dropped = [r.getMessage() for r in caplog.records if "missed a PONG" in r.getMessage()]
    assert len(dropped) == 1
    assert "client silent-1" in dropped[0]


async def test_silent_client_never_gets_a_request_while_a_live_client_serves(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Next to a live client, a PINGED silent connection is never paired: every request is 200."""
    async with make_gateway(heartbeat=0.2) as gw, make_client(gw, pool=2):
        async with silent_client(gw, "silent-2") as reader:
            with anyio.fail_after(2):
                assert await read_line(reader) == b"PING"
            with anyio.fail_after(10):
                responses = await asyncio.gather(*(get(gw.address, "/ping") for _ in range(10)))
            assert [(r.status, r.body) for r in responses] == [(200, b"pong")] * 10
            with anyio.fail_after(2):
                assert await reader.read() == b""  # dropped without ever seeing START
        assert "silent-2" not in gw.registry.tunnels["default"].clients


# --- the gateway restarts -----------------------------------------------------------------------


async def test_client_redials_a_restarted_gateway_by_itself(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Gateway down and up again on the same ports: the same client serves /ping again."""
    async with make_gateway() as probe:  # find two free ports, then give them back
        listen, tunnel_listen = probe.address, probe.tunnel_address
    same_ports = {"listen": listen, "tunnel_listen": tunnel_listen}
    with watch_log(r"retrying in \d+(\.\d+)? s") as retries:
        async with AsyncExitStack() as first:
            gw = await first.enter_async_context(held(make_gateway(**same_ports)))
            async with make_client(gw, pool=2, max_backoff=0.5) as client:
                assert (await get(gw.address, "/ping")).body == b"pong"
                retries.clear()
                await first.aclose()  # the gateway goes away; the client keeps running

                with anyio.fail_after(5):
                    line = await retries.seen()
                assert "retrying in" in line

                async with make_gateway(**same_ports) as again:
                    with anyio.fail_after(10):
                        await client.wait_ready()
                    response = await get(again.address, "/ping")
                    assert (response.status, response.body) == (200, b"pong")
                    assert again.registry.tunnels["default"].idle_count >= 1


# --- the gateway goes silent --------------------------------------------------------------------


async def test_client_redials_when_the_gateway_stops_pinging(
    make_gateway: GatewayFactory, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway that never PINGs (heartbeat=0.2 announced) is left within 3 heartbeats + 1 s.

    A client of a healthy gateway with the same heartbeat, run alongside,
    keeps its connections all that time: PINGs re-arm its watchdog.
    """
    caplog.set_level(logging.INFO, logger="revgw")
    heartbeat = 0.2
    async with (
        FakeGateway() as fake,
        make_gateway(heartbeat=heartbeat) as healthy,
        Client(
            gateway=healthy.tunnel_address,
            target=server.address,
            token=TOKEN,
            pool=1,
            tunnel="control",
        ) as control,
        Client(gateway=fake.address, target=server.address, token=TOKEN, pool=1) as client,
    ):
        with anyio.fail_after(5):
            await control.wait_ready()
        control_conns = set(healthy.registry.tunnels["control"].live)

        with anyio.fail_after(5):
            reader, writer = await fake.accept()
        challenge = hs.Challenge.new(heartbeat)
        writer.write(challenge.line())
        with anyio.fail_after(5):
            hello = hs.parse_hello(await read_line(reader))
        writer.write(hs.ready_line(TOKEN, challenge, hello))
        with anyio.fail_after(5):
            await client.wait_ready()
        # ... and then silence. The client must hang up and dial again.
        with anyio.fail_after(3 * heartbeat + 1 + 3):
            assert await reader.read() == b""
            second_reader, second_writer = await fake.accept()
        second_writer.write(hs.Challenge.new(heartbeat).line())
        with anyio.fail_after(5):  # a full new handshake, not a stray connection
            assert (await read_line(second_reader)).startswith(b"REVGW/1 AUTH ")
        assert healthy.registry.tunnels["control"].live == control_conns
        assert control.idle_count == 1
    silent = [
        r.getMessage() for r in caplog.records if "no PING from the gateway" in r.getMessage()
    ]
    assert silent == [
        f"[default#1] no PING from the gateway for {3 * heartbeat + 1:g} s; re-dialling"
    ]
