"""The demo producer against the demo server and against tiny canned servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from revgw._errors import ConfigError
from revgw_examples.producer import ProducerSettings, fetch, run
from revgw_examples.producer.producer import parse_url
from revgw_examples.server import Server, ServerSettings


@asynccontextmanager
async def canned(answer: bytes | None) -> AsyncIterator[str]:
    """A server that reads a request head and sends ``answer`` (None: never answers)."""

    async def handle(stream: SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            if answer is None:
                await anyio.sleep_forever()
            else:
                await stream.send(answer)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, handle, tasks)
        yield f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}/"
        tasks.cancel_scope.cancel()


async def collect(settings: ProducerSettings) -> tuple[int, list[str]]:
    lines: list[str] = []
    with anyio.fail_after(5):
        code = await run(settings, lines.append)
    return code, lines


async def test_pings_the_demo_server() -> None:
    async with Server(ServerSettings(listen="127.0.0.1:0")) as server:
        url = f"http://{server.address}/ping"
        code, lines = await collect(ProducerSettings(url=url, interval=0.01, count=3))
    assert (code, lines) == (0, ["pong", "pong", "pong"])


async def test_a_closed_port_is_an_error_line_and_exit_1() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(SocketAttribute.local_port)
    url = f"http://127.0.0.1:{port}/ping"
    code, lines = await collect(ProducerSettings(url=url, interval=0, count=2))
    assert code == 1
    assert lines == [f"error: connection refused to 127.0.0.1:{port}"] * 2


async def test_a_non_2xx_answer_is_an_error_line() -> None:
    answer = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 28\r\n"
        b"Connection: close\r\n\r\nno tunnel is online\r\nretry\r\n"
    )
    async with canned(answer) as url:
        code, lines = await collect(ProducerSettings(url=url, interval=0, count=1))
    assert (code, lines) == (1, ["error: 503 no tunnel is online"])


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\npon\r\n1\r\ng\r\n0\r\n\r\n",
            b"pong",
        ),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil close", b"until close"),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            b"ok",
        ),
    ],
)
async def test_fetch_reads_every_framing(answer: bytes, body: bytes) -> None:
    async with canned(answer) as url:
        result = await fetch(url, timeout=5)
    assert result.ok
    assert result.body == body
    assert result.error == ""


async def test_fetch_failures_become_results() -> None:
    async with canned(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort") as url:
        cut = await fetch(url, timeout=5)
    async with canned(b"garbage\r\n\r\n") as url:
        garbage = await fetch(url, timeout=5)
    async with canned(None) as url:
        silent = await fetch(url, timeout=0.1)
    assert not cut.ok and "closed before the response ended" in cut.error
    assert not garbage.ok and "invalid HTTP response" in garbage.error
    assert not silent.ok and "no answer from" in silent.error
    assert (cut.status, garbage.status, silent.status) == (None, None, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "https://example.com/"}, "--url"),
        ({"url": "127.0.0.1:9000/ping"}, "--url"),
        ({"url": "http:///ping"}, "--url"),
        ({"url": "http://host:99999/"}, "invalid port"),
        ({"interval": -1.0}, "--interval"),
        ({"count": 0}, "--count"),
        ({"timeout": 0.0}, "--timeout"),
    ],
)
def test_settings_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ProducerSettings(**kwargs)


def test_default_settings_and_ipv6_urls() -> None:
    settings = ProducerSettings()
    assert (settings.url, settings.interval, settings.count) == (
        "http://127.0.0.1:9000/ping",
        1.0,
        None,
    )
    assert parse_url("http://[::1]:8080/x?y=1") == ("::1", 8080, "/x?y=1")
    assert parse_url("http://example.com") == ("example.com", 80, "/")


async def test_without_count_it_runs_until_cancelled() -> None:
    lines: list[str] = []
    async with Server(ServerSettings(listen="127.0.0.1:0")) as server:
        settings = ProducerSettings(url=f"http://{server.address}/ping", interval=0.02)
        with anyio.move_on_after(0.2):
            await run(settings, lines.append)
    assert len(lines) >= 3
    assert set(lines) == {"pong"}
