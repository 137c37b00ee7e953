"""The plain public port: closing callers answered on the raw socket, the rest by the loop.

What a caller sees must not depend on which of the two carried it; these
tests also look at which one did (``CallerSocket.state``), since that is the
point of the port (a sixth of the gateway's CPU per fresh connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from conftest import ClientFactory, GatewayFactory
from helpers import Connection
from revgw import Gateway
from revgw import _public_port as public_port
from revgw._caller import CallerConnection, CallerState
from revgw._public_port import CallerSocket, FirstBytes, PublicPort, SocketState
from test_data_path import download_digest, expected_bytes_digest, raw_connection


async def until(condition: Callable[[], object], what: str) -> None:
    """Poll gateway-side state (a bounded loop, not a sleep)."""
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - gateway-side state, no event
            await anyio.sleep(0.005)
    assert condition(), what


def the_caller(gw: Gateway) -> CallerSocket:
    (caller,) = gw.callers
    assert isinstance(caller.transport, CallerSocket)
    return caller.transport


def closing_get(target: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target


@asynccontextmanager
async def gateway_and_caller(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> AsyncIterator[tuple[Gateway, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A gateway with one pooled connection, and a caller connected to it."""
    async with (
        make_gateway() as gw,
        make_client(gw, pool=1),
        raw_connection(gw.address) as (reader, writer),
    ):
        yield gw, reader, writer


def forwarding(gw: Gateway) -> bool:
    return any(c.state is CallerState.FORWARDING for c in gw.callers)


async def read_to_close(reader: asyncio.StreamReader) -> bytes:
    with anyio.fail_after(5):
        return await reader.read()  # the answer, then the gateway's close


async def test_a_closing_caller_is_answered_on_its_own_socket(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with gateway_and_caller(make_gateway, make_client) as (gw, reader, writer):
        writer.write(closing_get(b"/slow?ms=200"))
        await until(lambda: forwarding(gw), "the request is with the server")
        assert the_caller(gw).state is SocketState.RAW  # not watched while it waits
        answer = await read_to_close(reader)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(b"\r\n\r\nslow")


async def test_a_keep_alive_caller_is_handed_to_the_loop_and_served_again(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with make_gateway() as gw, make_client(gw, pool=1):
        conn = await Connection.open(gw.address)
        try:
            for _ in range(3):
                response = await conn.request(target="/ping")
                assert (response.status, response.body) == (200, b"pong")
            assert the_caller(gw).state is SocketState.PROMOTED
        finally:
            await conn.close()


@pytest.fixture(params=["epoll", "add_reader"])
def watching(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Silent callers watched in the port's own epoll set (Linux), or by the loop (elsewhere).

    The kernel does not hold them first (no TCP_DEFER_ACCEPT), as elsewhere
    than Linux: the gateway accepts them at once, before their request.
    """
    monkeypatch.setattr(public_port, "DEFER_SECONDS", 0)
    if request.param == "add_reader":
        monkeypatch.setattr(public_port, "EPOLL", None)
    elif public_port.EPOLL is None:
        pytest.skip("no epoll here")
    return str(request.param)


def first_bytes(gw: Gateway) -> FirstBytes:
    port = gw._plain_port
    assert port is not None and port.first_bytes is not None
    return port.first_bytes


async def served_when_it_speaks(
    gw: Gateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """The one silent caller is accepted and watched; its late request is answered."""
    await until(lambda: len(gw.callers) == 1, "accepted")
    assert the_caller(gw).state is SocketState.WATCHED
    writer.write(closing_get(b"/ping"))
    answer = await read_to_close(reader)
    assert len(first_bytes(gw)) == 0
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"pong")


async def test_the_kernel_holds_a_caller_until_its_request_comes(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """TCP_DEFER_ACCEPT: accepted with its request there, so it is never watched."""
    if public_port.TCP_DEFER_ACCEPT is None:
        pytest.skip("no TCP_DEFER_ACCEPT here")
    async with gateway_and_caller(make_gateway, make_client) as (gw, reader, writer):
        await anyio.sleep(0.3)  # (showing that nothing happens: no event to wait for)
        assert not gw.callers
        writer.write(closing_get(b"/ping"))
        answer = await read_to_close(reader)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"pong")


async def test_a_caller_silent_for_a_second_is_accepted_and_watched(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The kernel holds it one second at most; then it is ours, and its header timeout runs."""
    async with gateway_and_caller(make_gateway, make_client) as (gw, reader, writer):
        await served_when_it_speaks(gw, reader, writer)


async def test_a_caller_whose_request_comes_late_is_watched_then_served(
    make_gateway: GatewayFactory, make_client: ClientFactory, watching: str
) -> None:
    async with gateway_and_caller(make_gateway, make_client) as (gw, reader, writer):
        await served_when_it_speaks(gw, reader, writer)


async def test_many_silent_callers_are_watched_together_and_each_served(
    make_gateway: GatewayFactory, make_client: ClientFactory, watching: str
) -> None:
    async with make_gateway() as gw, make_client(gw, pool=4), contextlib.AsyncExitStack() as stack:
        callers = [await stack.enter_async_context(raw_connection(gw.address)) for _ in range(20)]
        await until(lambda: len(first_bytes(gw)) == 20, "all twenty watched")
        for number, (_, writer) in enumerate(callers):
            writer.write(closing_get(b"/bytes/%d" % number))
        answers = [await read_to_close(reader) for reader, _ in callers]
        assert len(first_bytes(gw)) == 0
    for number, answer in enumerate(answers):  # each its own answer: N bytes for /bytes/N
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and len(body) == number


async def test_a_silent_caller_closed_while_watched_leaves_no_watch_behind(
    make_gateway: GatewayFactory, make_client: ClientFactory, watching: str
) -> None:
    """The next socket may get the same descriptor: it must see its own bytes, not a stale watch."""
    async with make_gateway(header_timeout=0.2) as gw, make_client(gw, pool=1):
        async with raw_connection(gw.address) as (reader, _):
            await until(lambda: len(first_bytes(gw)) == 1, "watched")
            assert await read_to_close(reader) == b""  # the header timeout closed it
        assert len(first_bytes(gw)) == 0
        for _ in range(3):
            async with raw_connection(gw.address) as (reader, writer):
                await until(lambda: len(first_bytes(gw)) == 1, "watched")
                writer.write(closing_get(b"/ping"))
                assert (await read_to_close(reader)).endswith(b"\r\n\r\npong")


async def test_a_request_in_pieces_is_read_by_the_loop(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with gateway_and_caller(make_gateway, make_client) as (gw, reader, writer):
        writer.write(b"GET /ping HTTP/1.1\r\nHo")
        await until(
            lambda: gw.callers and the_caller(gw).state is SocketState.PROMOTED, "handed over"
        )
        writer.write(b"st: x\r\nConnection: close\r\n\r\n")
        answer = await read_to_close(reader)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"pong")


async def test_a_large_answer_to_a_closing_slow_reader_arrives_whole(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The kernel takes part of it; the loop's transport writes the rest, with flow control."""
    size = 8 * 1024 * 1024 + 17
    async with gateway_and_caller(make_gateway, make_client) as (_, reader, writer):
        writer.write(closing_get(b"/bytes/%d" % size))

        async def slowly() -> None:
            await anyio.sleep(0.001)

        status, digest = await download_digest(reader, slowly, piece=256 * 1024)
        assert await read_to_close(reader) == b""  # and then the close
    assert (status, digest) == (200, expected_bytes_digest(size))


async def test_a_caller_that_hangs_up_before_its_answer_costs_no_tunnel_connection(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Unwatched, the hang-up is noticed at the answer, which is dropped; the pool is intact."""
    async with make_gateway() as gw, make_client(gw, pool=1):
        sock = socket.create_connection(gw.address.rsplit(":", 1))  # type: ignore[arg-type]
        sock.sendall(closing_get(b"/slow?ms=200"))
        await until(lambda: forwarding(gw), "the request is with the server")
        # A reset, not a FIN: the answer's write then fails at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        await until(lambda: not gw.callers, "the caller is gone")
        tunnel = gw.registry.tunnels["default"]
        await until(lambda: tunnel.idle_count == 1, "the tunnel connection is back in the pool")
        async with raw_connection(gw.address) as (reader, writer):
            writer.write(closing_get(b"/ping"))
            assert (await read_to_close(reader)).endswith(b"\r\n\r\npong")


async def test_accepting_backs_off_when_out_of_file_descriptors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One line, a pause, then accepting again: never a busy loop on a full fd table."""
    monkeypatch.setattr(public_port, "ACCEPT_RETRY", 0.05)
    monkeypatch.setattr(public_port, "DEFER_SECONDS", 0)  # accept the connect at once
    attempts = 0

    class Exhausted(socket.socket):
        def _accept(self) -> tuple[int, object]:
            nonlocal attempts
            attempts += 1
            raise OSError(errno.EMFILE, "Too many open files")

    listener = Exhausted()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = PublicPort([listener], lambda: CallerConnection(None), lambda work: None)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, "revgw")
    port.start()
    try:
        with socket.create_connection(listener.getsockname()):
            await until(lambda: attempts >= 2, "accepting again after the pause")
    finally:
        port.close()
    assert attempts <= 3  # once, and once after each pause: not a spin
    lines = [r.getMessage() for r in caplog.records if "cannot accept" in r.getMessage()]
    assert lines and "Too many open files" in lines[0]
