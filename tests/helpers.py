"""A small HTTP/1.1 caller for tests: exact bytes out, parsed answers back.

Tests assert what a user sees (status, headers, body bytes), so this client
sends precisely what a test writes and parses answers with httptools, with
no retries and no connection reuse it did not ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httptools


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


@dataclass
class _Parse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    head_done: bool = False
    done: bool = False


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
        state = _Parse()

        class Callbacks:
            def on_status(self, status: bytes) -> None:
                pass

            def on_header(self, name: bytes, value: bytes) -> None:
                state.headers[name.decode().lower()] = value.decode("latin-1")

            def on_headers_complete(self) -> None:
                state.status = parser.get_status_code()
                if 100 <= state.status < 200 and state.status != 101:
                    state.headers.clear()
                    return
                state.head_done = True
                if head_only or state.status == 101:
                    state.done = True

            def on_body(self, body: bytes) -> None:
                state.body += body

            def on_message_complete(self) -> None:
                if state.head_done:
                    state.done = True

        parser = httptools.HttpResponseParser(Callbacks())
        data = self._buffer
        self._buffer = b""
        while True:
            if data:
                with contextlib.suppress(httptools.HttpParserUpgrade):
                    parser.feed_data(data)
                if state.done:
                    break
            data = await self.reader.read(65536)
            if not data:
                if state.head_done:  # close-delimited body
                    break
                raise ConnectionError("connection closed before a complete response")
        return Response(state.status, dict(state.headers), bytes(state.body))

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
