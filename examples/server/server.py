"""The private demo server: a small HTTP/1.1 service to put behind revgw.

It runs where the gateway cannot reach it (behind NAT); the revgw client dials
out to the gateway and forwards requests here. Its endpoints exercise what a
proxy must get right: keep-alive and pipelining, HEAD, bodies with no length
of their own (204/304), large downloads, streamed uploads, slow answers.

    GET  /ping         200 "pong", and prints "[peer]: ping" on stdout
    GET  /bytes/N      N bytes (byte i is i % 256), streamed 64 KiB at a time
    POST /echo         the request body back, streamed as it arrives
    GET  /slow?ms=N    waits N ms, then 200 "slow"
    GET  /status/N     answers with status N (200-599)

HEAD works on every GET endpoint. Parsing is revgw's sans-IO RequestReader;
this file only reads bytes, feeds them in and acts on the events.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

import anyio
from anyio.abc import SocketAttribute, SocketStream

from revgw._address import parse_address, peer_of
from revgw._errors import BadRequest, ConfigError, HTTPError
from revgw._http import (
    LAST_CHUNK,
    Body,
    RequestEvent,
    RequestHead,
    RequestReader,
    encode_chunk,
    error_response,
)
from revgw._settings import setting

logger = logging.getLogger("revgw.server")

# Byte i of every /bytes/N answer is i % 256, so a 64 KiB block repeats exactly.
BLOCK = bytes(range(256)) * 256
NETWORK_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


@dataclass(frozen=True)
class ServerSettings:
    listen: str = setting("0.0.0.0:8080", "address the demo server listens on", "HOST:PORT")

    def __post_init__(self) -> None:
        try:
            parse_address(self.listen)
        except ConfigError as exc:
            raise ConfigError(f"--listen: {exc}") from None


def _number(text: str) -> int | None:
    """A plain decimal number, or None (int() would also accept ' 1_0 ')."""
    return int(text) if re.fullmatch(r"[0-9]{1,12}", text) else None


def _render_head(status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", "Server: revgw-demo"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class _Request:
    head: RequestHead
    query: dict[str, list[str]]
    keep_alive: bool

    @property
    def wants_body(self) -> bool:
        return self.head.method != b"HEAD"


class _Connection:
    """One caller connection: read a request, answer it, repeat (so answers stay in order)."""

    def __init__(self, stream: SocketStream, peer: str) -> None:
        self.stream = stream
        self.peer = peer
        self.reader = RequestReader()
        self.pending: deque[RequestEvent] = deque()
        self.answering = False  # a response head is out: too late for a 400

    async def next_event(self) -> RequestEvent | None:
        """The next request event, or None when the caller has closed its side."""
        while not self.pending:
            try:
                data = await self.stream.receive()
            except anyio.EndOfStream:
                return None
            self.pending.extend(self.reader.feed(data))
        return self.pending.popleft()

    async def read_body(self) -> bytes | None:
        """The next piece of the current request's body, or None at its end."""
        event = await self.next_event()
        if event is None:
            raise anyio.EndOfStream  # the caller left mid-body
        return event.data if isinstance(event, Body) else None

    async def serve(self) -> None:
        try:
            while True:
                self.answering = False
                event = await self.next_event()
                if not isinstance(event, RequestHead):
                    return  # closed, or raw bytes after an upgrade request: not ours
                if not await self.respond(event):
                    return
        except HTTPError as exc:
            if not self.answering:
                await self.stream.send(error_response(exc, keep_alive=False))

    async def respond(self, head: RequestHead) -> bool:
        """Answer one request; return whether the connection may carry another."""
        # HTTP/1.0 callers get one answer per connection; an upgrade is not supported.
        keep_alive = head.keep_alive and head.version == "1.1" and not head.upgrade
        expects = any(
            n.lower() == b"expect" and v.strip().lower() == b"100-continue" for n, v in head.headers
        )
        if expects and head.has_body and head.version == "1.1":
            # The caller waits for this before sending its body.
            await self.stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        url = urlsplit(head.target.decode("latin-1"))
        request = _Request(head, parse_qs(url.query), keep_alive)
        if head.method == b"POST" and url.path == "/echo":
            await self.echo(request)
            return keep_alive
        while await self.read_body() is not None:
            pass  # no other endpoint wants a body: drop it
        if head.method not in (b"GET", b"HEAD"):
            await self.send_text(request, 404, "not found\n")
        elif url.path == "/ping":
            print(f"[{self.peer}]: ping", flush=True)
            await self.send_text(request, 200, "pong")
        elif url.path.startswith("/bytes/"):
            await self.send_bytes(request, _number(url.path.removeprefix("/bytes/")))
        elif url.path == "/slow":
            await self.slow(request)
        elif url.path.startswith("/status/"):
            await self.send_status(request, _number(url.path.removeprefix("/status/")))
        else:
            await self.send_text(request, 404, "not found\n")
        return keep_alive

    async def send(
        self, request: _Request, status: int, headers: list[tuple[str, str]], body: bytes = b""
    ) -> None:
        """Send a response head, with ``body`` in the same write (so not for HEAD)."""
        self.answering = True
        head = _render_head(status, headers, request.keep_alive)
        await self.stream.send(head + body if request.wants_body else head)

    async def send_text(self, request: _Request, status: int, text: str) -> None:
        body = text.encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        await self.send(request, status, headers, body)

    async def send_bytes(self, request: _Request, size: int | None) -> None:
        if size is None:
            raise BadRequest("/bytes/N needs a number of bytes")
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        await self.send(request, 200, headers)
        remaining = size if request.wants_body else 0
        while remaining:  # never N bytes in memory: N may be 64 MiB
            piece = BLOCK if remaining >= len(BLOCK) else BLOCK[:remaining]
            await self.stream.send(piece)  # waits while the caller is slow to read
            remaining -= len(piece)

    async def slow(self, request: _Request) -> None:
        ms = _number(request.query.get("ms", ["0"])[0])
        if ms is None:
            raise BadRequest("/slow?ms=N needs a number of milliseconds")
        await anyio.sleep(ms / 1000)
        await self.send_text(request, 200, "slow")

    async def send_status(self, request: _Request, status: int | None) -> None:
        if status is None or not 200 <= status <= 599:
            raise BadRequest("/status/N needs a status from 200 to 599")
        if status in (204, 304):
            # Never a body. A 304 still names the length the full answer would
            # have, as real servers do: a proxy must not wait for those bytes.
            headers = [("Content-Length", "10")] if status == 304 else []
            await self.send(request, status, headers)
        else:
            await self.send_text(request, status, f"status {status}\n")

    async def echo(self, request: _Request) -> None:
        """Send the body back piece by piece as it arrives: a 16 MiB upload stays small here."""
        chunked = request.head.chunked
        framing = (
            ("Transfer-Encoding", "chunked")
            if chunked
            else ("Content-Length", str(request.head.content_length or 0))
        )
        headers = [("Content-Type", "application/octet-stream"), framing]
        await self.send(request, 200, headers)
        while (data := await self.read_body()) is not None:
            if data:  # an empty chunk would end a chunked body early
                await self.stream.send(encode_chunk(data) if chunked else data)
        if chunked:
            await self.stream.send(LAST_CHUNK)


class Server:
    """The demo server; ``async with Server(settings) as srv`` listens until the block ends."""

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings()
        self._address: str | None = None
        self._stack = AsyncExitStack()

    @property
    def address(self) -> str:
        """The bound ``host:port``: the real port when port 0 was asked for."""
        if self._address is None:
            raise RuntimeError("the server is not listening")
        return self._address

    async def __aenter__(self) -> Server:
        address = parse_address(self.settings.listen)
        async with AsyncExitStack() as stack:
            listener = await anyio.create_tcp_listener(
                local_host=address.host, local_port=address.port
            )
            await stack.enter_async_context(listener)  # exits last: closes the socket
            tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tasks.cancel_scope.cancel)  # exits first: stops every task
            tasks.start_soon(listener.serve, self._handle, tasks)
            self._address = peer_of(listener.extra(SocketAttribute.local_address))
            self._stack = stack.pop_all()  # everything started: __aexit__ undoes it
        logger.info("server is listening on %s", self._address)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._address = None
        await self._stack.__aexit__(exc_type, exc, tb)

    async def run(self) -> None:
        """Listen and serve until cancelled (what ``revgw server`` does)."""
        async with self:
            await anyio.sleep_forever()

    async def _handle(self, stream: SocketStream) -> None:
        peer = peer_of(stream.extra(SocketAttribute.remote_address))
        try:
            async with stream:  # closed however the connection ends
                await _Connection(stream, peer).serve()
        except NETWORK_ERRORS as exc:
            # The caller went away: its business, never the server's end.
            logger.debug("connection from %s ended: %r", peer, exc)


async def serve_forever(settings: ServerSettings) -> None:
    """Run the demo server until cancelled."""
    await Server(settings).run()
