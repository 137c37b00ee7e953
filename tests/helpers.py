"""A small HTTP/1.1 caller for tests: exact bytes out, parsed answers back.

Tests assert what a user sees (status, headers, body bytes), so this client
sends precisely what a test writes and parses answers with httptools, with
no retries and no connection reuse it did not ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from conftest import TOKEN
from revgw import Gateway
from revgw import _handshake as hs
from revgw._address import peer_of


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = b""
    keep_alive: bool = True

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Connection:
    """One TCP connection to an HTTP server; send requests, read responses in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buffer = b""

    @classmethod
    async def open(cls, address: str) -> Connection:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(
        self,
        method: str = "GET",
        target: str = "/ping",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        host: str = "test.local",
    ) -> Response:
        head = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}")
        if body and not any(
            k.lower() in ("content-length", "transfer-encoding") for k in headers or {}
        ):
            head.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        return await self.read_response(head_only=method == "HEAD")

    async def read_response(self, head_only: bool = False) -> Response:
        """Read exactly one final response; bytes after it stay for the next read.

        Parsed by hand (not httptools) so that the byte where one response
        ends is known even when two arrive in a single read.
        """
        while True:
            head = await self._read_until(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ")[1])
            headers: dict[str, str] = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if not (100 <= status < 200 and status != 101):
                break
        if head_only or status in (101, 204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked()
        elif "content-length" in headers:
            body = await self._read_exactly(int(headers["content-length"]))
        else:
            body = await self._read_to_eof()
        return Response(status, headers, body, head)

    async def _more(self) -> bool:
        data = await self.reader.read(65536)
        self._buffer += data
        return bool(data)

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            if not await self._more():
                raise ConnectionError("connection closed before a complete response")
        index = self._buffer.index(marker) + len(marker)
        out, self._buffer = self._buffer[:index], self._buffer[index:]
        return out

    async def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not await self._more():
                raise ConnectionError("connection closed before a complete response")
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    async def _read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int((await self._read_until(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while await self._read_until(b"\r\n") != b"\r\n":
                    pass  # trailers
                return body
            body += (await self._read_exactly(size + 2))[:-2]

    async def _read_to_eof(self) -> bytes:
        while await self._more():
            pass
        out, self._buffer = self._buffer, b""
        return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the server closed the connection (reads EOF or a reset)."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionError, OSError):
            return True
        return data == b""


async def get(address: str, target: str = "/ping", **kwargs: object) -> Response:
    """One request on a fresh connection."""
    conn = await Connection.open(address)
    try:
        return await conn.request(target=target, **kwargs)  # type: ignore[arg-type]
    finally:
        await conn.close()


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def read_line(reader: asyncio.StreamReader) -> bytes:
    """One ``\\r\\n`` line without its ending; fails the test on EOF."""
    line = await reader.readline()
    assert line.endswith(b"\r\n"), f"connection ended mid-line: {line!r}"
    return line[:-2]


class FakeGateway:
    """A tunnel port the test drives by hand: ``accept()`` hands over each new connection."""

    def __init__(self) -> None:
        self.address = ""
        self._accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        self._accepted = asyncio.Queue()
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeGateway:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        self._done.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def accept(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self._accepted.get()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        await self._accepted.put((reader, writer))
        await self._done.wait()
        writer.close()


async def fake_client(
    gw: Gateway, client_id: str, hosts: tuple[str, ...] = ()
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw tunnel connection that completes the handshake, then does only what the test says."""
    reader, writer = await asyncio.open_connection(*split(gw.tunnel_address))
    try:
        with anyio.fail_after(5):
            challenge = hs.parse_challenge(await read_line(reader))
            hello = hs.make_hello(TOKEN, challenge, "default", client_id, hosts)
            writer.write(hello.line())
            hs.check_verdict(TOKEN, challenge, hello, await read_line(reader))
    except BaseException:
        writer.close()
        raise
    return reader, writer


@asynccontextmanager
async def private_server(
    handler: Callable[[SocketStream], Awaitable[None]],
) -> AsyncIterator[str]:
    """An anyio TCP server on 127.0.0.1:0 running ``handler`` per connection; yields its address."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        yield peer_of(listener.extra(SocketAttribute.local_address))
        tg.cancel_scope.cancel()


class Recorder:
    """Keeps every byte it receives; answers each request head with 200 ``ok``."""

    def __init__(self) -> None:
        self.received = b""
        self.heads: list[bytes] = []
        self.got_head = anyio.Event()

    async def __call__(self, stream: SocketStream) -> None:
        buffered = BufferedByteReceiveStream(stream)
        async with stream:
            while True:
                try:
                    head = await buffered.receive_until(b"\r\n\r\n", 65536)
                except (anyio.EndOfStream, anyio.IncompleteRead, OSError):
                    self.received += bytes(buffered.buffer)
                    return
                self.received += head + b"\r\n\r\n"
                self.heads.append(head)
                self.got_head.set()
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def free_port() -> int:
    """A loopback port nobody listens on now, from below the kernel's ephemeral range.

    Tests that close such a port and bind it again (a gateway restarted on it,
    a TCP tunnel's port opened anew) must not find it taken meanwhile as the
    local port of some outgoing connection, which one from that range can be.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            ephemeral = int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768  # Linux's default, and below most systems' ranges
    for _ in range(100):  # bounded: a port that is taken is skipped
        port = random.randrange(10_000, max(ephemeral, 10_001))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # all taken: let the kernel pick one
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
