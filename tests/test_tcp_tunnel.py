"""Raw TCP tunnels: a public port per tunnel, each caller spliced to one pooled connection."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from conftest import TOKEN, GatewayFactory
from helpers import free_port
from revgw import AccessDenied, Client, Gateway
from revgw._proxy_protocol import V2_SIGNATURE, proxy_header

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def private(handler: Handler) -> AsyncIterator[str]:
    """A private TCP server on loopback running ``handler`` per connection."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo everything; at EOF say ``bye`` and half-close."""
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.write(b"bye")
    writer.write_eof()
    await writer.drain()
    writer.close()


@asynccontextmanager
async def tcp_client(gw: Gateway, target: str, **overrides: object) -> AsyncIterator[Client]:
    options: dict[str, object] = {
        "gateway": gw.tunnel_address,
        "target": target,
        "token": TOKEN,
        "pool": 2,
        "max_backoff": 0.5,
        "tunnel": "db",
        "tcp": "auto",
    }
    options.update(overrides)
    async with Client(**options) as client:
        with anyio.fail_after(5):
            await client.wait_ready()
        yield client


async def dial(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def test_proxy_headers() -> None:
    assert (
        proxy_header("v1", "203.0.113.9:4000", "192.0.2.1:20017")
        == b"PROXY TCP4 203.0.113.9 192.0.2.1 4000 20017\r\n"
    )
    assert proxy_header("v1", "[2001:db8::1]:4000", "[::1]:5").startswith(
        b"PROXY TCP6 2001:db8::1 ::1 "
    )
    v2 = proxy_header("v2", "203.0.113.9:4000", "192.0.2.1:20017")
    assert v2[:12] == V2_SIGNATURE and v2[12:14] == b"\x21\x11"
    assert struct.unpack("!H", v2[14:16]) == (12,)
    assert v2[16:] == bytes([203, 0, 113, 9, 192, 0, 2, 1]) + struct.pack("!HH", 4000, 20017)
    assert proxy_header("v1", "unknown", "192.0.2.1:1") == b"PROXY UNKNOWN\r\n"
    assert proxy_header("v2", "unknown", "") == V2_SIGNATURE + b"\x20\x00\x00\x00"


async def test_auto_port_64mib_both_ways_at_once(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    lo = free_port()
    async with (
        make_gateway(tcp_ports=f"{lo}-{lo + 50}") as gw,
        private(echo) as target,
        tcp_client(gw, target) as client,
    ):
        port = client.tcp_port
        assert lo <= port <= lo + 50
        assert f"tcp tunnel 'db' is public on gateway 127.0.0.1 port {port}" in caplog.text
        reader, writer = await dial(port)
        size, chunk = 64 << 20, os.urandom(1 << 20)
        sent, got = hashlib.sha256(), hashlib.sha256()

        async def send() -> None:
            for i in range(size // len(chunk)):
                block = chunk[i:] + chunk[:i]
                sent.update(block)
                writer.write(block)
                await writer.drain()
            writer.write_eof()

        async def receive() -> int:
            count = 0
            while count < size:
                data = await reader.readexactly(1 << 18)
                got.update(data)
                count += len(data)
            return count

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                received = await receive()
            tail = await reader.read()
        assert received == size and tail == b"bye"
        assert got.hexdigest() == sent.hexdigest()
        writer.close()


async def test_half_close_both_ways(make_gateway: GatewayFactory) -> None:
    seen: list[bytes] = []
    heard = anyio.Event()

    async def speaks_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello, ")
        writer.write_eof()  # the server is done talking, still listening
        seen.append(await reader.read())
        heard.set()
        writer.close()

    lo = free_port()
    async with make_gateway(tcp_ports=f"{lo}-{lo + 50}") as gw:
        # caller half-closes: the server sees EOF, and its answer still arrives
        async with private(echo) as target, tcp_client(gw, target) as client:
            reader, writer = await dial(client.tcp_port)
            writer.write(b"ping")
            writer.write_eof()
            with anyio.fail_after(5):
                assert await reader.read() == b"pingbye"
            writer.close()
        # server half-closes: the caller sees EOF, and its bytes still reach the server
        async with private(speaks_first) as target, tcp_client(gw, target, tunnel="db2") as c2:
            reader, writer = await dial(c2.tcp_port)
            with anyio.fail_after(5):
                assert await reader.read() == b"hello, "
                writer.write(b"world")
                writer.write_eof()
                await heard.wait()
            assert seen == [b"world"]
            writer.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_proxy_protocol(make_gateway: GatewayFactory, version: str) -> None:
    headers: list[tuple[str, str, int, int]] = []

    async def parse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if version == "v1":
            words = (await reader.readuntil(b"\r\n")).decode().split()
            assert words[:2] == ["PROXY", "TCP4"]
            headers.append((words[2], words[3], int(words[4]), int(words[5])))
        else:
            head = await reader.readexactly(16)
            assert head[:12] == V2_SIGNATURE and head[12:14] == b"\x21\x11"
            body = await reader.readexactly(struct.unpack("!H", head[14:16])[0])
            src, dst = ipaddress.ip_address(body[:4]), ipaddress.ip_address(body[4:8])
            headers.append((str(src), str(dst), *struct.unpack("!HH", body[8:12])))
        await echo(reader, writer)

    lo = free_port()
    async with (
        make_gateway(tcp_ports=f"{lo}-{lo + 50}") as gw,
        private(parse) as target,
        tcp_client(gw, target, proxy_protocol=version) as client,
    ):
        reader, writer = await dial(client.tcp_port)
        caller_port = writer.get_extra_info("sockname")[1]
        writer.write(b"data")
        writer.write_eof()
        with anyio.fail_after(5):
            assert await reader.read() == b"databye"
        writer.close()
    assert headers == [("127.0.0.1", "127.0.0.1", caller_port, client.tcp_port)]


async def test_refused_outside_the_range_and_by_default(make_gateway: GatewayFactory) -> None:
    lo = free_port()
    async with private(echo) as target:
        async with make_gateway() as gw:
            with anyio.fail_after(5), pytest.raises(AccessDenied, match="not enabled"):
                async with tcp_client(gw, target):
                    pass
        async with make_gateway(tcp_ports=f"{lo}-{lo}") as gw:
            with anyio.fail_after(5), pytest.raises(AccessDenied, match="outside"):
                async with tcp_client(gw, target, tcp=str(lo + 1)):
                    pass
            # a second client of the same tunnel joins; another tunnel on that port is refused
            async with tcp_client(gw, target, tcp=str(lo)) as first:
                async with tcp_client(gw, target, tcp=str(lo), client_id="second") as second:
                    assert first.tcp_port == second.tcp_port == lo
                    assert gw.registry.tunnels["db"].clients.keys() >= {"second"}
                with anyio.fail_after(5), pytest.raises(AccessDenied, match="belongs to TCP"):
                    async with tcp_client(gw, target, tcp=str(lo), tunnel="other"):
                        pass


async def test_linger(make_gateway: GatewayFactory) -> None:
    lo = free_port()
    async with (
        make_gateway(tcp_ports=f"{lo}-{lo}", tcp_linger=0.3) as gw,
        private(echo) as target,
    ):
        async with tcp_client(gw, target, tcp=str(lo)):
            pass
        await anyio.sleep(0.1)  # within the linger: the port is still open, and a client rejoins
        async with tcp_client(gw, target, tcp=str(lo)):
            await anyio.sleep(0.6)  # longer than the linger: kept while a client is there
            reader, writer = await dial(lo)
            writer.write(b"x")
            writer.write_eof()
            with anyio.fail_after(5):
                assert await reader.read() == b"xbye"
            writer.close()
        with anyio.fail_after(3):
            for _ in range(150):  # bounded: the clock closes the port within a few ticks
                if "db" not in gw.tcp.by_tunnel:
                    break
                await anyio.sleep(0.02)
        with pytest.raises(OSError):
            await dial(lo)


async def test_no_free_connection_closes_the_caller(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller waits in line up to --pool-wait, then is closed with one log line, no bytes."""
    lo = free_port()
    async with (
        make_gateway(tcp_ports=f"{lo}-{lo}", pool_wait=0.3, max_conns_per_client=1) as gw,
        private(echo) as target,
        tcp_client(gw, target, tcp=str(lo), pool=1),
    ):
        _, busy = await dial(lo)  # holds the only connection the client may have
        reader, writer = await dial(lo)
        with anyio.fail_after(5):
            assert await reader.read() == b""
        assert "closing caller" in caplog.text and "no free connection within 0.3 s" in caplog.text
        for w in (busy, writer):
            w.close()
