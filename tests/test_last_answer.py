"""The last answer on a caller's connection leaves together with the FIN.

The gateway corks its plain public port, so every caller's socket starts
corked (the cork is inherited, at no cost per connection). When an answer is
the last before a close, it stays corked and the kernel sends it with the FIN
in one segment: one delivery and one wake-up fewer for every ``Connection:
close`` request. Any other write uncorks first, once per connection, or the
answer would wait for the kernel's 200 ms cork timer. The unit tests drive
the real ``CallerConnection`` over a transport that records what happens to
it, in order; the last ones go through a real gateway and tunnel.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from benchmarks.hotpath import pooled_connection

from helpers import Connection, split
from revgw._caller import CallerConnection
from revgw._gateway import Gateway
from revgw._tunnel_conn import TunnelConnection

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux's")

REQUEST = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n"
REQUEST_CLOSE = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nConnection: close\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n"
    b"Connection: keep-alive\r\n\r\npong"
)


class RecordingSocket:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if (level, option) == (socket.IPPROTO_TCP, socket.TCP_CORK):
            self.calls.append(("cork" if value else "uncork", None))


class RecordingTransport:
    """Enough of a transport for the gateway's protocols; it records writes, corks and ends."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.calls: list[tuple[str, Any]] = []
        self.socket = RecordingSocket(self.calls)
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("127.0.0.1", 50000)
        if name == "socket":
            return self.socket
        return default

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.calls.append(("close", None))
            self.protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def steps(transport: RecordingTransport) -> list[str]:
    return [name for name, _ in transport.calls]


@pytest.fixture
def unstarted() -> Gateway:
    """A gateway object driven by hand, never started."""
    gateway = Gateway(token="t" * 32)
    gateway.callers_corked = True  # as when its plain public port opens on Linux
    return gateway


@pytest.fixture
def pooled(unstarted: Gateway) -> TunnelConnection:
    """One tunnel connection in the default tunnel's pool, as the hot-path harness makes it."""
    return pooled_connection(unstarted)


def caller_of(gateway: Gateway) -> tuple[CallerConnection, RecordingTransport]:
    caller = CallerConnection(gateway)
    transport = RecordingTransport(caller)
    caller.connection_made(transport)  # type: ignore[arg-type]
    return caller, transport


def test_an_answer_before_a_close_stays_corked_and_the_close_sends_it(
    unstarted: Gateway, pooled: TunnelConnection
) -> None:
    caller, transport = caller_of(unstarted)
    caller.data_received(REQUEST_CLOSE)
    pooled.data_received(RESPONSE)
    assert steps(transport) == ["write", "close"]
    assert b"Connection: close\r\n" in transport.calls[0][1]
    assert transport.calls[0][1].endswith(b"\r\n\r\npong")


def test_a_kept_connection_is_uncorked_once_before_its_first_answer(
    unstarted: Gateway, pooled: TunnelConnection
) -> None:
    caller, transport = caller_of(unstarted)
    for _ in range(3):
        caller.data_received(REQUEST)
        pooled.data_received(RESPONSE)
    assert steps(transport) == ["uncork", "write", "write", "write"]


def test_a_streamed_answer_to_a_closing_caller_is_uncorked_at_its_first_part(
    unstarted: Gateway, pooled: TunnelConnection
) -> None:
    caller, transport = caller_of(unstarted)
    caller.data_received(REQUEST_CLOSE)
    pooled.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npo")
    assert steps(transport) == ["uncork", "write"]  # the caller may be watching a stream
    pooled.data_received(b"ng\r\n0\r\n\r\n")
    assert steps(transport) == ["uncork", "write", "write", "close"]


def test_an_error_that_ends_the_connection_stays_corked(unstarted: Gateway) -> None:
    caller, transport = caller_of(unstarted)
    caller.data_received(b"GET / HTTP/1.1\r\nHost: nowhere.example\r\nConnection: close\r\n\r\n")
    # Closed, or half-closed to linger (a FIN all the same): either sends it.
    assert steps(transport) in (["write", "close"], ["write", "write_eof"])
    assert transport.calls[0][1].startswith(b"HTTP/1.1 503 ")  # no client is connected


def test_an_error_on_a_kept_connection_is_uncorked(unstarted: Gateway) -> None:
    caller, transport = caller_of(unstarted)
    caller.data_received(b"GET / HTTP/1.1\r\nHost: nowhere.example\r\n\r\n")
    assert steps(transport) == ["uncork", "write"]


def test_a_caller_not_corked_is_never_uncorked(
    unstarted: Gateway, pooled: TunnelConnection
) -> None:
    """TLS, or no TCP_CORK: the port was not corked, so nothing is touched."""
    unstarted.callers_corked = False
    caller, transport = caller_of(unstarted)
    caller.data_received(REQUEST)
    pooled.data_received(RESPONSE)
    assert steps(transport) == ["write"]


# --- through a real gateway and tunnel ------------------------------------------------------
# A corked answer is never lost, only late: the kernel sends it after 200 ms.
# So these bound the time of 20 answers: held back, they would take 4 s.


async def test_kept_answers_through_a_tunnel_are_not_held_back(chain: Gateway) -> None:
    assert chain.callers_corked  # a plain public port, on Linux
    conn = await Connection.open(chain.address)
    try:
        started = time.monotonic()
        for _ in range(20):
            response = await conn.request("GET", "/ping")
            assert (response.status, response.body) == (200, b"pong")
        elapsed = time.monotonic() - started
    finally:
        await conn.close()
    assert elapsed < 2.0, f"20 keep-alive answers took {elapsed:.2f} s"


async def test_answers_that_close_arrive_whole_and_at_once(chain: Gateway) -> None:
    host, port = split(chain.address)
    started = time.monotonic()
    for _ in range(20):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        answer = await reader.read()  # to the end: the gateway closes
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert b"\r\nConnection: close\r\n" in answer and answer.endswith(b"\r\n\r\npong")
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"20 answers on fresh connections took {elapsed:.2f} s"
