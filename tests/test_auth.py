"""Behaviour 4: only clients that prove the token get in, and the token never crosses the wire.

Every test here watches real sockets: a wrong token is refused (in code and
on the command line), a relay records the bytes of a whole handshake and a
few requests and finds no trace of the token, a recorded AUTH line replayed
on a new connection is refused, and a gateway that cannot prove the token
never gets a client's service.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from conftest import TOKEN, GatewayFactory
from helpers import Connection, FakeGateway, get, read_line, split
from revgw import AccessDenied, Client
from revgw import _handshake as hs
from revgw_examples.server import Server


class Relay:
    """A TCP relay that keeps every byte it carries, per connection and direction."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.address = ""
        self.sessions: list[tuple[bytearray, bytearray]] = []  # (to upstream, from upstream)
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    @property
    def captured(self) -> bytes:
        """Everything that crossed the relay, both directions, all connections."""
        return b"".join(bytes(up) + bytes(down) for up, down in self.sessions)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection(*split(self.upstream))
        self._writers.append(up_writer)
        up, down = bytearray(), bytearray()
        self.sessions.append((up, down))
        await asyncio.gather(_pipe(reader, up_writer, up), _pipe(up_reader, writer, down))
        writer.close()
        up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: bytearray) -> None:
    try:
        while data := await reader.read(65536):
            log += data
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


class CountingServer:
    """A TCP port that only notes who connects to it (a stand-in private server)."""

    def __init__(self) -> None:
        self.address = ""
        self.peers: list[str] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(str(writer.get_extra_info("peername")))
        writer.close()


@asynccontextmanager
async def counting_server() -> AsyncIterator[CountingServer]:
    counter = CountingServer()
    listener = await asyncio.start_server(counter._handle, "127.0.0.1", 0)
    counter.address = f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    try:
        yield counter
    finally:
        listener.close()


def gateway_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "revgw.gateway" and r.levelno >= logging.WARNING
    ]


# --- a wrong token ------------------------------------------------------------------------


async def test_client_with_wrong_token_raises_access_denied(
    make_gateway: GatewayFactory, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The library client raises AccessDenied saying why, and the tunnel stays empty."""
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway() as gw:
        with anyio.fail_after(5), pytest.raises(AccessDenied, match="unknown token"):
            async with Client(
                gateway=gw.tunnel_address, target=server.address, token="wrong", pool=2
            ):
                await anyio.sleep_forever()  # the denial cancels this
        assert not gw.registry.tunnels["default"].live
        warnings = gateway_warnings(caplog)
        assert warnings
        assert all("denied" in w and "unknown token" in w for w in warnings)


async def test_cli_client_with_wrong_token_says_so_in_one_line_and_exits_1(
    make_gateway: GatewayFactory, server: Server
) -> None:
    """``revgw client --token wrong`` prints one clear line on stderr, no traceback, exit 1."""
    async with make_gateway() as gw:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "revgw",
            "client",
            "--gateway",
            gw.tunnel_address,
            "--target",
            server.address,
            "--token",
            "wrong",
            "--pool",
            "2",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            with anyio.fail_after(15):
                out, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.communicate()
    stderr = err.decode()
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines() == ["revgw client: the gateway denied this client: unknown token"]
    assert out == b""


# --- the token on the wire ----------------------------------------------------------------


async def test_token_never_crosses_the_wire(make_gateway: GatewayFactory, server: Server) -> None:
    """A relay sees the readable handshake and the traffic, never the token in any encoding."""
    secret = "wire-s\u00ebcret-token-42"  # not ASCII: its UTF-8 bytes are checked too
    async with (
        make_gateway(token=secret) as gw,
        Relay(gw.tunnel_address) as relay,
        Client(gateway=relay.address, target=server.address, token=secret, pool=2) as client,
    ):
        with anyio.fail_after(5):
            await client.wait_ready()
        for _ in range(3):
            response = await get(gw.address, "/ping")
            assert (response.status, response.body) == (200, b"pong")
        conn = await Connection.open(gw.address)
        try:
            echoed = await conn.request("POST", "/echo", body=b"hello through the relay")
        finally:
            await conn.close()
        assert echoed.body == b"hello through the relay"
    captured = relay.captured
    assert len(relay.sessions) >= 2
    for readable in (
        b"REVGW/1 CHALLENGE nonce=",
        b"REVGW/1 AUTH key=",
        b"REVGW/1 READY proof=",
        b"START ",
        b"pong",
        b"hello through the relay",
    ):
        assert readable in captured, readable
    encoded = secret.encode()
    for form in (
        encoded,
        encoded.hex().encode(),
        base64.b64encode(encoded),
        base64.urlsafe_b64encode(encoded).rstrip(b"="),
        b"wire-s",  # even a prefix of it
    ):
        assert form not in captured, form


async def test_replayed_auth_line_is_denied_on_a_new_connection(
    make_gateway: GatewayFactory, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """An AUTH line recorded from a real client is useless on a new connection: DENIED, closed."""
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway() as gw:
        async with (
            Relay(gw.tunnel_address) as relay,
            Client(gateway=relay.address, target=server.address, token=TOKEN) as client,
        ):
            with anyio.fail_after(5):
                await client.wait_ready()
        recorded = [
            line + b"\r\n"
            for up, _ in relay.sessions
            for line in bytes(up).split(b"\r\n")
            if line.startswith(b"REVGW/1 AUTH ")
        ]
        assert recorded
        caplog.clear()

        reader, writer = await asyncio.open_connection(*split(gw.tunnel_address))
        try:
            with anyio.fail_after(5):
                assert (await read_line(reader)).startswith(b"REVGW/1 CHALLENGE ")
                writer.write(recorded[0])
                verdict = await read_line(reader)
                assert verdict.startswith(b"REVGW/1 DENIED ")
                assert b"bad token signature" in verdict
                assert await reader.read() == b""  # and the gateway hangs up
        finally:
            writer.close()
        assert not gw.registry.tunnels["default"].live
        warnings = gateway_warnings(caplog)
        assert len(warnings) == 1, warnings
        assert "denied" in warnings[0]
        assert "bad token signature" in warnings[0]


# --- a gateway that cannot prove the token ------------------------------------------------


async def test_client_refuses_a_gateway_that_cannot_prove_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """READY with a wrong proof: the client hangs up, never dials the target, retries later."""
    caplog.set_level(logging.INFO, logger="revgw")
    async with (
        FakeGateway() as fake,
        counting_server() as target,
        Client(
            gateway=fake.address, target=target.address, token=TOKEN, pool=1, max_backoff=0.2
        ) as client,
    ):
        for forge in ("zeros", "other-cnonce", "other-token"):
            with anyio.fail_after(5):
                reader, writer = await fake.accept()
            challenge = hs.Challenge.new(5)
            writer.write(challenge.line())
            with anyio.fail_after(5):
                hello = hs.parse_hello(await read_line(reader))
            if forge == "zeros":
                ready = b"REVGW/1 READY proof=" + b"0" * 64 + b"\r\n"
            elif forge == "other-cnonce":  # a READY recorded from another connection
                other = hs.make_hello(TOKEN, challenge, hello.tunnel, hello.client, ())
                ready = hs.ready_line(TOKEN, challenge, other)
            else:
                ready = hs.ready_line("not-" + TOKEN, challenge, hello)
            # A forged READY followed at once by a request: it must never be served.
            writer.write(ready + hs.start_line("203.0.113.9:4000") + b"GET /ping HTTP/1.1\r\n\r\n")
            with anyio.fail_after(5):
                assert await reader.read() == b"", forge  # the client hangs up, says nothing
            writer.close()
            assert client.idle_count == 0
    assert target.peers == []  # the private server was never dialled
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) >= 2
    assert all("could not prove it knows the token" in line for line in retries)


async def test_client_pointed_at_another_service_says_so_and_keeps_trying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A port that greets with something else (SSH here): a warning naming the mistake, retries."""
    caplog.set_level(logging.INFO, logger="revgw")
    async with (
        FakeGateway() as fake,
        Client(
            gateway=fake.address, target="127.0.0.1:9", token=TOKEN, pool=1, max_backoff=0.2
        ) as client,
    ):
        for _ in range(2):
            with anyio.fail_after(5):
                reader, writer = await fake.accept()
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            with anyio.fail_after(5):
                assert await reader.read() == b""  # the client sends nothing and hangs up
            writer.close()
            assert client.idle_count == 0
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries
    assert "this is not a revgw gateway tunnel port" in retries[0]
    assert "SSH-2.0" in retries[0]
