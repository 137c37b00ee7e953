"""The data path end to end: caller -> gateway -> client -> private server, on loopback.

Queueing while the pool refills, byte-exact bodies in every framing, streaming
and backpressure on large transfers, keep-alive with warm tunnel reuse,
pipelining, and the X-Forwarded-* headers the private server sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import anyio
import pytest
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from conftest import ClientFactory, GatewayFactory
from helpers import Connection, Recorder, get, private_server
from revgw import Gateway

MiB = 1024 * 1024
# The demo server's /bytes/N: byte i is i % 256, so 64 KiB blocks repeat exactly.
BLOCK = bytes(range(256)) * 256
TIMEOUT = 20  # generous bound for any one exchange; a hang fails instead of stalling


# --- a raw HTTP/1.1 reader that consumes exactly one response ----------------------


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes
    head: bytes
    chunk_sizes: list[int]

    @property
    def chunked(self) -> bool:
        return self.headers.get("transfer-encoding", "").lower() == "chunked"


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers, head


async def read_raw(reader: asyncio.StreamReader, head_only: bool = False) -> Raw:
    """Read exactly one response (no byte of the next one), so later reads stay in sync."""
    async with asyncio.timeout(TIMEOUT):
        status, headers, head = await read_head(reader)
        sizes: list[int] = []
        if head_only or status < 200 or status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                sizes.append(size)
                parts.append(await reader.readexactly(size))
                assert await reader.readexactly(2) == b"\r\n"
            body = b"".join(parts)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
    return Raw(status, headers, body, head, sizes)


@asynccontextmanager
async def raw_connection(
    address: str,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


def expected_bytes_digest(size: int) -> str:
    """sha256 of what the demo server's /bytes/size sends, built the way it builds it."""
    digest = hashlib.sha256()
    whole, rest = divmod(size, len(BLOCK))
    for _ in range(whole):
        digest.update(BLOCK)
    digest.update(BLOCK[:rest])
    return digest.hexdigest()


async def download_digest(
    reader: asyncio.StreamReader,
    on_read: Callable[[], Awaitable[None]] | None = None,
    piece: int = 256 * 1024,
) -> tuple[int, str]:
    """Read one Content-Length response, hashing the body as it streams in."""
    async with asyncio.timeout(TIMEOUT):
        status, headers, _ = await read_head(reader)
        remaining = int(headers["content-length"])
        digest = hashlib.sha256()
        while remaining:
            data = await reader.read(min(piece, remaining))
            if not data:
                raise ConnectionError(f"connection closed with {remaining} bytes missing")
            digest.update(data)
            remaining -= len(data)
            if on_read is not None:
                await on_read()
    return status, digest.hexdigest()


# --- a private server of our own, to see exactly what reaches it ---------------------


def header_lines(head: bytes, name: str) -> list[str]:
    prefix = name.lower() + ":"
    return [
        line.partition(":")[2].strip()
        for line in head.decode("latin-1").split("\r\n")
        if line.lower().startswith(prefix)
    ]


# --- item 2: requests queue for a connection instead of being refused ----------------


async def test_200_concurrent_requests_on_a_pool_of_2_all_succeed(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """200 concurrent slow requests through a client with pool=2: every one gets 200."""
    # Caller, gateway, client and server all live in this process: about six
    # sockets per request in flight, more than a default soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        if hard != resource.RLIM_INFINITY and hard < 4096:
            pytest.skip(f"needs 4096 open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    async with make_gateway() as gw, make_client(gw, pool=2):
        with anyio.fail_after(60):
            responses = await asyncio.gather(*(get(gw.address, "/slow?ms=50") for _ in range(200)))
    statuses = [r.status for r in responses]
    assert statuses == [200] * 200, {s: statuses.count(s) for s in set(statuses)}
    assert all(r.body == b"slow" for r in responses)
    assert all(r.header("x-revgw-error") is None for r in responses)


# --- item 6: bodies arrive byte-identical, in every framing ---------------------------


async def test_16_mib_upload_with_content_length_echoes_byte_identical(chain: Gateway) -> None:
    """A 16 MiB POST /echo (Content-Length) comes back byte for byte."""
    body = os.urandom(16 * MiB)
    async with raw_connection(chain.address) as (reader, writer):
        head = b"POST /echo HTTP/1.1\r\nHost: test.local\r\nContent-Length: %d\r\n\r\n" % len(body)

        async def upload() -> None:
            writer.write(head + body)
            await writer.drain()

        # Send and read at once, as real clients do: the echo streams back while
        # the upload is still going, and neither side buffers 16 MiB.
        _, response = await asyncio.gather(upload(), read_raw(reader))
    assert response.status == 200
    assert response.headers["content-length"] == str(len(body))
    assert hashlib.sha256(response.body).hexdigest() == hashlib.sha256(body).hexdigest()


async def test_64_mib_download_is_byte_identical(chain: Gateway) -> None:
    """GET /bytes/67108864 through the tunnel is exactly what the demo server generates."""
    size = 64 * MiB
    async with raw_connection(chain.address) as (reader, writer):
        writer.write(b"GET /bytes/%d HTTP/1.1\r\nHost: test.local\r\n\r\n" % size)
        status, digest = await download_digest(reader)
        # The connection is still good for another request after 64 MiB.
        writer.write(b"GET /ping HTTP/1.1\r\nHost: test.local\r\n\r\n")
        after = await read_raw(reader)
    assert status == 200
    assert digest == expected_bytes_digest(size)
    assert (after.status, after.body) == (200, b"pong")


async def test_slow_reader_gets_every_byte_and_gateway_buffers_stay_small(
    chain: Gateway,
) -> None:
    """A caller reading 64 MiB slowly gets it all; the gateway's write buffer stays bounded."""
    size = 64 * MiB
    largest = 0

    async def slow_and_watch() -> None:
        nonlocal largest
        for caller in chain.callers:
            if caller.transport is not None:
                largest = max(largest, caller.transport.get_write_buffer_size())
        await asyncio.sleep(0.001)  # the slowness is the behaviour under test

    async with raw_connection(chain.address) as (reader, writer):
        writer.write(b"GET /bytes/%d HTTP/1.1\r\nHost: test.local\r\n\r\n" % size)
        status, digest = await download_digest(reader, slow_and_watch, piece=64 * 1024)
    assert status == 200
    assert digest == expected_bytes_digest(size)
    # Backpressure reaches the private server: without it the gateway would
    # queue most of the 64 MiB for the slow caller.
    assert 0 < largest < 8 * MiB, largest


async def test_chunked_upload_echoes_identical_and_chunked(chain: Gateway) -> None:
    """A chunked POST /echo with chunks of random sizes comes back identical, chunked."""
    rng = random.Random(6)
    chunks = [rng.randbytes(rng.randint(1, 200_000)) for _ in range(12)]
    body = b"".join(chunks)
    async with raw_connection(chain.address) as (reader, writer):
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n"
        )

        async def upload() -> None:
            for chunk in chunks:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

        _, response = await asyncio.gather(upload(), read_raw(reader))
        # The same connection carries the next request: the chunked end was framed right.
        writer.write(b"GET /ping HTTP/1.1\r\nHost: test.local\r\n\r\n")
        after = await read_raw(reader)
    assert response.status == 200
    assert response.chunked
    assert "content-length" not in response.headers
    assert response.body == body
    assert (after.status, after.body) == (200, b"pong")


async def test_echo_streams_each_chunk_back_before_the_next_is_sent(chain: Gateway) -> None:
    """Request and response flow at once: every chunk's echo arrives before the next is sent."""
    rng = random.Random(7)
    chunks = [rng.randbytes(rng.randint(1, 100_000)) for _ in range(8)]
    got = bytearray()
    async with raw_connection(chain.address) as (reader, writer), asyncio.timeout(TIMEOUT):
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        status, headers, _ = await read_head(reader)  # the server answers before the body
        sent = 0
        for chunk in chunks:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            while len(got) < sent:  # the gateway must not hold the body back
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                assert size > 0, "the response ended before the request did"
                got += await reader.readexactly(size)
                assert await reader.readexactly(2) == b"\r\n"
        writer.write(b"0\r\n\r\n")
        assert await reader.readexactly(5) == b"0\r\n\r\n"
        writer.write(b"GET /ping HTTP/1.1\r\nHost: test.local\r\n\r\n")
        after = await read_raw(reader)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert bytes(got) == b"".join(chunks)
    assert (after.status, after.body) == (200, b"pong")


async def test_small_chunked_upload_with_chunk_extensions_and_trailers(chain: Gateway) -> None:
    """Chunk extensions and trailers from the caller do not corrupt the echoed body."""
    request = (
        b"POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    async with raw_connection(chain.address) as (reader, writer):
        writer.write(request)
        response = await read_raw(reader)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: test.local\r\n\r\n")
        after = await read_raw(reader)
    assert (response.status, response.body) == (200, b"hello world")
    assert response.chunked
    assert (after.status, after.body) == (200, b"pong")


async def test_head_has_headers_no_body_and_connection_stays_usable(chain: Gateway) -> None:
    """HEAD /ping: Content-Length 4, no body bytes, and a GET on the same connection works."""
    async with raw_connection(chain.address) as (reader, writer):
        writer.write(b"HEAD /ping HTTP/1.1\r\nHost: test.local\r\n\r\n")
        head = await read_raw(reader, head_only=True)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: test.local\r\n\r\n")
        # The very next bytes must be the GET's status line: no stray body from HEAD.
        after = await read_raw(reader)
    assert head.status == 200
    assert head.headers["content-length"] == "4"
    assert (after.status, after.body) == (200, b"pong")


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_status_then_next_request_on_same_connection(
    chain: Gateway, status: int
) -> None:
    """204 and 304 (with Content-Length: 10) arrive without a body; the connection goes on."""
    async with raw_connection(chain.address) as (reader, writer):
        writer.write(b"GET /status/%d HTTP/1.1\r\nHost: test.local\r\n\r\n" % status)
        first = await read_raw(reader)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: test.local\r\n\r\n")
        after = await read_raw(reader)
    assert first.status == status
    if status == 304:
        assert first.headers["content-length"] == "10"
    assert (after.status, after.body) == (200, b"pong")


async def test_expect_100_continue_is_relayed_before_the_body(chain: Gateway) -> None:
    """The caller sees 100 Continue through the gateway before sending its body, then the echo."""
    body = b"sent only after 100 Continue"
    async with raw_connection(chain.address) as (reader, writer):
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: test.local\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        interim = await read_raw(reader)
        writer.write(body)
        final = await read_raw(reader)
    assert interim.status == 100
    assert interim.head.startswith(b"HTTP/1.1 100 ")
    assert (final.status, final.body) == (200, body)


# --- failure paths of one exchange ------------------------------------------------------


async def test_response_cut_short_mid_body_is_not_a_clean_end(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """A private server dying mid-body: the caller sees a broken connection, not a clean end."""

    async def short(stream: SocketStream) -> None:
        async with stream:
            await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)

    async with (
        private_server(short) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
        raw_connection(gw.address) as (reader, writer),
    ):
        writer.write(b"GET /short HTTP/1.1\r\nHost: test.local\r\n\r\n")
        async with asyncio.timeout(TIMEOUT):
            status, headers, _ = await read_head(reader)
            received = b""
            try:
                while data := await reader.read(65536):
                    received += data
            except ConnectionError:
                pass
    assert status == 200
    assert headers["content-length"] == "100000"
    assert len(received) < 100000


async def test_garbage_from_the_private_server_is_502(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """A private server answering non-HTTP: the caller gets 502 bad-upstream-response."""

    async def garbage(stream: SocketStream) -> None:
        async with stream:
            await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
            await stream.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    async with (
        private_server(garbage) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        response = await get(gw.address, "/x")
    assert response.status == 502
    assert response.header("x-revgw-error") == "bad-upstream-response"


async def test_silent_private_server_is_504_after_upstream_timeout(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """A private server that never answers: 504 upstream-timeout after upstream_timeout."""
    release = anyio.Event()

    async def silent(stream: SocketStream) -> None:
        async with stream:
            await release.wait()

    async with (
        private_server(silent) as target,
        make_gateway(upstream_timeout=0.3) as gw,
        make_client(gw, target=target),
    ):
        response = await get(gw.address, "/x")
        release.set()
    assert response.status == 504
    assert response.header("x-revgw-error") == "upstream-timeout"


async def test_server_silent_after_100_continue_is_504(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """An interim 100 Continue is not an answer: the upstream timeout still applies."""
    release = anyio.Event()

    async def continue_then_silence(stream: SocketStream) -> None:
        async with stream:
            await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
            await stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            await release.wait()

    async with (
        private_server(continue_then_silence) as target,
        make_gateway(upstream_timeout=0.3) as gw,
        make_client(gw, target=target),
    ):
        conn = await Connection.open(gw.address)
        await conn.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        with anyio.fail_after(10):
            response = await conn.read_response()
        release.set()
        await conn.close()
    assert response.status == 504
    assert response.header("x-revgw-error") == "upstream-timeout"


async def test_get_retried_once_when_the_server_closes_without_answering(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The server hangs up before any byte back: an idempotent GET is retried and succeeds."""
    seen = 0

    async def first_hangs_up(stream: SocketStream) -> None:
        nonlocal seen
        seen += 1
        async with stream:
            head = await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
            if seen == 1:
                return  # close without a byte
            assert head.startswith(b"GET /retry ")
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain")

    async with (
        private_server(first_hangs_up) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        response = await get(gw.address, "/retry")
    assert (response.status, response.body) == (200, b"again")
    assert seen == 2


async def test_post_not_retried_when_the_server_closes_without_answering(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """A POST whose server hangs up without answering is a 502, never sent twice."""
    seen = 0

    async def hangs_up(stream: SocketStream) -> None:
        nonlocal seen
        seen += 1
        async with stream:
            await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)

    async with (
        private_server(hangs_up) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        response = await get(gw.address, "/once", method="POST", body=b"data")
    assert response.status == 502
    assert response.header("x-revgw-error") == "bad-upstream-response"
    assert seen == 1


# --- item 7: keep-alive on the caller side, warm reuse on the tunnel side --------------


async def test_100_requests_on_one_connection_reuse_warm_tunnel_connections(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """100 sequential requests on one caller connection use at most pool-size tunnel connections."""
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway() as gw, make_client(gw, pool=2):
        conn = await Connection.open(gw.address)
        try:
            statuses = []
            for i in range(100):
                response = await conn.request("GET", f"/bytes/{i}")
                assert response.body == BLOCK[:i]
                statuses.append(response.status)
        finally:
            await conn.close()
        live = len(gw.registry.tunnels["default"].live)
    assert statuses == [200] * 100
    lines = [r.getMessage() for r in caplog.records if r.name == "revgw.access"]
    assert len(lines) == 100
    matches = [re.match(r"\[default#(\d+)\] ", line) for line in lines]
    used = {m.group(1) for m in matches if m is not None}
    assert None not in matches, lines
    assert 1 <= len(used) <= 2, used
    # The client kept its pool and no more: 2 idle plus the warm one(s) in use.
    assert live <= 2 + len(used)


async def test_pipelined_requests_get_responses_in_order(chain: Gateway) -> None:
    """Two requests written in one send on one connection get their two responses, in order."""
    async with raw_connection(chain.address) as (reader, writer):
        writer.write(
            b"GET /slow?ms=50 HTTP/1.1\r\nHost: test.local\r\n\r\n"
            b"GET /bytes/3 HTTP/1.1\r\nHost: test.local\r\n\r\n"
        )
        first = await read_raw(reader)
        second = await read_raw(reader)
    assert (first.status, first.body) == (200, b"slow")
    assert (second.status, second.body) == (200, b"\x00\x01\x02")


async def test_pipelined_burst_with_bodies_answers_every_request_in_order(chain: Gateway) -> None:
    """Twenty pipelined echoes and GETs in one send all come back in order."""
    requests = []
    expected = []
    for i in range(20):
        if i % 2:
            payload = b"payload %d" % i
            requests.append(
                b"POST /echo HTTP/1.1\r\nHost: test.local\r\nContent-Length: %d\r\n\r\n%s"
                % (len(payload), payload)
            )
            expected.append(payload)
        else:
            requests.append(b"GET /bytes/%d HTTP/1.1\r\nHost: test.local\r\n\r\n" % i)
            expected.append(BLOCK[:i])
    async with raw_connection(chain.address) as (reader, writer):
        writer.write(b"".join(requests))
        bodies = [(await read_raw(reader)).body for _ in requests]
    assert bodies == expected


async def test_an_answer_before_the_request_body_ends_keeps_the_connection(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """A server may answer before reading the body (an early 401 or 413, say).

    That answer does not say ``Connection: close``, so the caller may send its
    next request on the same connection: it must be answered. The rest of the
    first body goes nowhere (the server has answered it), and the tunnel
    connection that carried half a body is not used again.
    """
    recorder = Recorder()  # answers each head at once, without reading a body
    async with (
        private_server(recorder) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        conn = await Connection.open(gw.address)
        try:
            with anyio.fail_after(5):
                await conn.send(
                    b"POST /upload HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\n\r\n"
                )
                early = await conn.read_response()
                await conn.send(b"hello")
                after = await conn.request("GET", "/next")
        finally:
            await conn.close()
    assert (early.status, early.body, early.header("connection")) == (200, b"ok", None)
    assert (after.status, after.body) == (200, b"ok")
    assert [head.split(b" ")[:2] for head in recorder.heads] == [
        [b"POST", b"/upload"],
        [b"GET", b"/next"],
    ]
    assert b"hello" not in recorder.received


# --- X-Forwarded-* as the private server sees them ---------------------------------------


async def test_private_server_sees_x_forwarded_headers(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The private server gets X-Forwarded-For/-Host/-Proto from the gateway, Host unchanged."""
    recorder = Recorder()
    async with (
        private_server(recorder) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        response = await get(gw.address, "/who", host="app.example:8443")
    assert (response.status, response.body) == (200, b"ok")
    (head,) = recorder.heads
    assert head.startswith(b"GET /who HTTP/1.1\r\n")
    assert header_lines(head, "Host") == ["app.example:8443"]
    assert header_lines(head, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_lines(head, "X-Forwarded-Host") == ["app.example"]
    assert header_lines(head, "X-Forwarded-Proto") == ["http"]


async def test_caller_supplied_forwarding_headers_are_replaced(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """A caller's own X-Forwarded-For: 6.6.6.6 (and friends) never reach the private server."""
    recorder = Recorder()
    spoofed = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "Forwarded": "for=6.6.6.6;proto=https",
    }
    async with (
        private_server(recorder) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        response = await get(gw.address, "/who", headers=spoofed)
    assert response.status == 200
    (head,) = recorder.heads
    assert b"6.6.6.6" not in head
    assert b"evil.example" not in head
    assert header_lines(head, "Forwarded") == []
    assert header_lines(head, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_lines(head, "X-Forwarded-Host") == ["test.local"]
    assert header_lines(head, "X-Forwarded-Proto") == ["http"]


async def test_hop_by_hop_headers_do_not_reach_the_private_server(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Connection, Keep-Alive and headers the Connection header names stay on the caller's hop."""
    recorder = Recorder()
    headers = {
        "Connection": "keep-alive, X-Hop-Secret",
        "Keep-Alive": "timeout=5",
        "X-Hop-Secret": "for the gateway only",
        "X-End-To-End": "kept",
    }
    async with (
        private_server(recorder) as target,
        make_gateway() as gw,
        make_client(gw, target=target),
    ):
        response = await get(gw.address, "/hop", headers=headers)
    assert response.status == 200
    (head,) = recorder.heads
    assert header_lines(head, "X-Hop-Secret") == []
    assert header_lines(head, "Keep-Alive") == []
    assert header_lines(head, "X-End-To-End") == ["kept"]
