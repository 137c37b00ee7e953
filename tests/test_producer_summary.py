"""The producer's summary on exit (sent, ok, failed by reason, p50/p99) and progress line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from revgw_examples.producer import ProducerSettings, run
from revgw_examples.producer.producer import Result, Tally, percentile
from revgw_examples.server import Server, ServerSettings

PONG = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong"
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"


@asynccontextmanager
async def flaky(fail_on: int) -> AsyncIterator[str]:
    """A server answering ``pong``, except 503 to its ``fail_on``-th request."""
    seen = 0

    async def handle(stream: SocketStream) -> None:
        nonlocal seen
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            seen += 1
            await stream.send(BUSY if seen == fail_on else PONG)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, handle, tasks)
        yield f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}/ping"
        tasks.cancel_scope.cancel()


SUMMARY = re.compile(
    r"^sent (\d+), ok (\d+), failed (\d+)(?: \(([^)]*)\))?;"
    r" latency p50 ([\d.]+) ms, p99 ([\d.]+) ms$"
)


async def test_count_5_with_one_503_summarises_it() -> None:
    lines: list[str] = []
    reports: list[str] = []
    async with flaky(fail_on=3) as url:
        with anyio.fail_after(5):
            code = await run(
                ProducerSettings(url=url, interval=0, count=5), lines.append, reports.append
            )
    assert code == 1
    assert lines == ["pong", "pong", "error: 503 busy", "pong", "pong"]  # unchanged output
    assert len(reports) == 1
    match = SUMMARY.match(reports[0])
    assert match, reports
    sent, ok, failed, reasons, p50, p99 = match.groups()
    assert (sent, ok, failed, reasons) == ("5", "4", "1", "503: 1")
    assert 0 < float(p50) <= float(p99) < 5000


async def test_summary_when_cancelled_and_progress_line_on_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    reports: list[str] = []
    lines: list[str] = []
    async with Server(ServerSettings(listen="127.0.0.1:0")) as server:
        settings = ProducerSettings(url=f"http://{server.address}/ping", interval=0.01)
        with anyio.move_on_after(0.3):
            await run(settings, lines.append, reports.append, progress=True)
    assert len(lines) >= 2
    assert set(lines) == {"pong"}
    assert len(reports) == 1
    assert reports[0].startswith(f"sent {len(lines)}, ok {len(lines)}, failed 0; latency p50 ")
    err = capsys.readouterr().err
    assert f"\rsent {len(lines)}, ok {len(lines)}" in err  # the live line, redrawn in place
    assert err.endswith("\r\x1b[K")  # and wiped before the summary


def test_tally_reasons_and_percentiles() -> None:
    tally = Tally()
    tally.add(Result(False, None, b"", "connection refused to 127.0.0.1:1"), 0.0)
    tally.add(Result(False, None, b"", "no answer from 127.0.0.1:1 within 1 s"), 1.0)
    tally.add(Result(False, 502, b"", "502 Bad Gateway"), 0.002)
    tally.add(Result(True, 200, b"pong", ""), 0.001)
    assert tally.summary() == (
        "sent 4, ok 1, failed 3 (502: 1, refused: 1, timeout: 1); latency p50 1.0 ms, p99 2.0 ms"
    )
    assert Tally().summary() == "sent 0, ok 0, failed 0"
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99)) == (50.0, 99.0)


async def test_cli_prints_the_summary_on_stderr_after_sigterm() -> None:
    """stdout keeps exactly one line per request; the summary goes to stderr, exit 0."""
    async with Server(ServerSettings(listen="127.0.0.1:0")) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REVGW_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "revgw", "producer", "--url",
            f"http://{server.address}/ping", "--interval", "0.05",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            with anyio.fail_after(10):
                assert await process.stdout.readline() == b"pong\n"
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                out, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0
    assert set(out.decode().splitlines()) <= {"pong"}
    summary = [line for line in err.decode().splitlines() if line.startswith("summary: ")]
    assert len(summary) == 1, err
    assert SUMMARY.match(summary[0].removeprefix("summary: ")), summary
