"""The demo server over real loopback sockets."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httptools
import pytest
from anyio.abc import SocketAttribute, SocketStream

from revgw._address import parse_address
from revgw._errors import ConfigError
from revgw._http import LAST_CHUNK, encode_chunk
from revgw_examples.server import Server, ServerSettings

MiB = 1024 * 1024


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Client:
    """A raw connection plus a response parser that copes with pipelined answers."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.parser = httptools.HttpResponseParser(self)
        self.current = Response()
        self.buffer = bytearray()
        self.done: deque[Response] = deque()

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def response(self) -> Response:
        while not self.done:
            self.parser.feed_data(await self.stream.receive())
        return self.done.popleft()

    async def read_all(self) -> bytes:
        """Everything until the server closes (for answers we check byte for byte)."""
        data = bytearray()
        while True:
            try:
                data += await self.stream.receive()
            except anyio.EndOfStream:
                return bytes(data)

    def on_message_begin(self) -> None:
        self.current = Response()
        self.buffer = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.buffer += body

    def on_message_complete(self) -> None:
        self.current.body = bytes(self.buffer)
        self.done.append(self.current)


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Server, Client]]:
    with anyio.fail_after(5):
        async with Server(ServerSettings(listen="127.0.0.1:0")) as server:
            address = parse_address(server.address)
            async with await anyio.connect_tcp(address.host, address.port) as stream:
                yield server, Client(stream)


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def test_ping_prints_the_peer(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving() as (server, client):
        await client.send(get("/ping"))
        response = await client.response()
        peer = client.stream.extra(SocketAttribute.local_address)
        assert server.address.startswith("127.0.0.1:")
        assert not server.address.endswith(":0")
    assert response.status == 200
    assert response.body == b"pong"
    assert response.headers["content-length"] == "4"
    assert response.headers["content-type"].startswith("text/plain")
    assert f"[127.0.0.1:{peer[1]}]: ping\n" in capsys.readouterr().out


async def test_head_has_headers_and_no_body() -> None:
    async with serving() as (_, client):
        await client.send(get("/ping", "HEAD", "Connection: close\r\n"))
        raw = await client.read_all()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 4\r\n" in raw
    assert raw.endswith(b"\r\n\r\n")
    assert b"pong" not in raw


async def test_bytes_is_exact_and_deterministic() -> None:
    async with serving() as (_, client):
        await client.send(get("/bytes/1048576") + get("/bytes/1000"))
        big = await client.response()
        small = await client.response()
    assert big.headers["content-length"] == str(MiB)
    assert hashlib.sha256(big.body).digest() == hashlib.sha256(pattern(MiB)).digest()
    assert small.body == pattern(1000)


@pytest.mark.parametrize(
    "path", ["/bytes/x", "/bytes/-1", "/status/99", "/status/600", "/slow?ms=a"]
)
async def test_bad_numbers_are_400(path: str) -> None:
    async with serving() as (_, client):
        await client.send(get(path))
        assert (await client.read_all()).startswith(b"HTTP/1.1 400 ")


async def echo(client: Client, head: bytes, pieces: list[bytes]) -> Response:
    async def upload() -> None:
        await client.send(head)
        for piece in pieces:
            await client.send(piece)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(upload)  # the answer streams back while we still send
        response = await client.response()
    return response


async def test_echo_with_content_length() -> None:
    body = pattern(MiB)[::-1]
    async with serving() as (_, client):
        head = get("/echo", "POST", f"Content-Length: {len(body)}\r\n")
        pieces = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
        response = await echo(client, head, pieces)
    assert response.status == 200
    assert response.headers["content-length"] == str(MiB)
    assert response.body == body


async def test_echo_chunked() -> None:
    body = pattern(MiB)[::-1]
    pieces = [body[i : i + 70_000] for i in range(0, len(body), 70_000)]
    async with serving() as (_, client):
        head = get("/echo", "POST", "Transfer-Encoding: chunked\r\n")
        chunked = [encode_chunk(piece) for piece in pieces] + [LAST_CHUNK]
        response = await echo(client, head, chunked)
        await client.send(get("/ping"))  # the connection is still good
        assert (await client.response()).body == b"pong"
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.body == body


async def test_100_continue_comes_before_the_body() -> None:
    async with serving() as (_, client):
        await client.send(get("/echo", "POST", "Content-Length: 5\r\nExpect: 100-continue\r\n"))
        interim = await client.response()
        await client.send(b"hello")
        response = await client.response()
    assert interim.status == 100
    assert (response.status, response.body) == (200, b"hello")


async def test_slow() -> None:
    async with serving() as (_, client):
        started = anyio.current_time()
        await client.send(get("/slow?ms=50"))
        response = await client.response()
    assert anyio.current_time() - started >= 0.05
    assert (response.status, response.body) == (200, b"slow")


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_keep_the_connection(status: int) -> None:
    async with serving() as (_, client):
        await client.send(get(f"/status/{status}"))
        response = await client.response()
        # A stray body byte would now be parsed as the start of the next answer.
        await client.send(get("/ping"))
        after = await client.response()
    assert (response.status, response.body) == (status, b"")
    assert response.headers.get("content-length") == ("10" if status == 304 else None)
    assert after.body == b"pong"


async def test_other_statuses_and_404() -> None:
    async with serving() as (_, client):
        await client.send(get("/status/503") + get("/nowhere") + get("/ping", "DELETE"))
        answers = [await client.response() for _ in range(3)]
    assert [a.status for a in answers] == [503, 404, 404]
    assert all(a.body for a in answers)


async def test_pipelined_requests_answer_in_order() -> None:
    async with serving() as (_, client):
        await client.send(get("/slow?ms=30") + get("/ping"))
        first = await client.response()
        second = await client.response()
    assert (first.body, second.body) == (b"slow", b"pong")


async def test_http_10_closes_after_the_answer() -> None:
    async with serving() as (_, client):
        await client.send(b"GET /ping HTTP/1.0\r\n\r\n")
        raw = await client.read_all()
    assert b"\r\nConnection: close\r\n" in raw
    assert raw.endswith(b"\r\n\r\npong")


async def test_malformed_request_is_400_and_closes() -> None:
    async with serving() as (_, client):
        await client.send(b"NOT HTTP AT ALL\r\n\r\n")
        raw = await client.read_all()
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in raw


async def test_a_vanishing_caller_does_not_stop_the_server() -> None:
    async with serving() as (server, client):
        await client.send(get("/bytes/67108864"))
        await client.stream.receive()
        await client.stream.aclose()  # leave mid-download
        address = parse_address(server.address)
        async with await anyio.connect_tcp(address.host, address.port) as stream:
            other = Client(stream)
            await other.send(get("/ping"))
            assert (await other.response()).body == b"pong"


def test_settings_validate_the_address() -> None:
    assert ServerSettings().listen == "0.0.0.0:8080"
    with pytest.raises(ConfigError, match="--listen"):
        ServerSettings(listen="nowhere")
