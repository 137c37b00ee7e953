"""The load: wrk (or a small asyncio stand-in), the burst, the download.

Each function takes a loopback port and returns plain numbers, so the same code
measures the direct path (nginx's port) and the tunnel (the gateway's port).
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .procs import HOST, BenchError

PING = b"GET /ping HTTP/1.1\r\nHost: bench\r\n\r\n"
PING_CLOSE = b"GET /ping HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


@dataclass
class Load:
    """One load run: request rate, latency percentiles, errors."""

    tool: str
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int  # socket errors + non-2xx answers
    error_detail: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- wrk ------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not match:
        raise BenchError(f"wrk: cannot read the latency {value!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse_wrk(output: str, connections: int) -> Load:
    """Read wrk's ``--latency`` report: requests, duration, p50/p99, errors."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if not done:
        raise BenchError(f"wrk printed no request count: {output.strip()[-300:]!r}")
    requests = int(done[1])
    seconds = _ms(done[2] + done[3]) / 1000
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)$", output, re.MULTILINE))
    detail: dict[str, int] = {}
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        for name, value in zip(
            ("connect", "read", "write", "timeout"), sockets.groups(), strict=True
        ):
            if int(value):
                detail[name] = int(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        detail["non-2xx"] = int(non_2xx[1])
    return Load(
        tool="wrk",
        connections=connections,
        seconds=seconds,
        requests=requests,
        rps=requests / seconds if seconds else 0.0,
        p50_ms=_ms(percentiles["50"]) if "50" in percentiles else None,
        p99_ms=_ms(percentiles["99"]) if "99" in percentiles else None,
        errors=sum(detail.values()),
        error_detail=detail,
    )


def run_wrk(wrk: str, port: int, connections: int, duration: float, fresh: bool) -> Load:
    """``wrk -t2 -cN -dS --latency``; with ``fresh``, every request on a new connection."""
    argv = [wrk, "-t2", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    if fresh:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{HOST}:{port}/ping")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    return parse_wrk(done.stdout, connections)


# -- the asyncio stand-in for wrk (smoke runs on machines without wrk) ----------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    body = await reader.readexactly(int(length[1])) if length else await reader.read()
    return status, body


async def _python_load(port: int, connections: int, duration: float, fresh: bool) -> Load:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(HOST, port)
                reader, writer = conn
                writer.write(PING_CLOSE if fresh else PING)
                status, _ = await asyncio.wait_for(_read_response(reader), 5)
                if fresh:
                    writer.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                errors[type(exc).__name__] += 1
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            latencies.append(time.perf_counter() - start)
            if status // 100 != 2:
                errors["non-2xx"] += 1
        if conn is not None:
            conn[1].close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    seconds = time.perf_counter() - start
    latencies.sort()

    def percentile(q: float) -> float | None:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
            if latencies
            else None
        )

    return Load(
        tool="python",
        connections=connections,
        seconds=seconds,
        requests=len(latencies),
        rps=len(latencies) / seconds,
        p50_ms=percentile(0.50),
        p99_ms=percentile(0.99),
        errors=sum(errors.values()),
        error_detail=dict(errors),
    )


def run_python_load(port: int, connections: int, duration: float, fresh: bool) -> Load:
    """A small asyncio load loop: far slower than wrk, only good enough to keep paths working."""
    return asyncio.run(_python_load(port, connections, duration, fresh))


# -- the burst --------------------------------------------------------------------------


@dataclass
class Burst:
    sent: int
    ok: int  # answered 200 with the body "pong"
    wall_s: float
    outcomes: dict[str, int]  # "200 pong": n, "503": n, "ConnectionResetError": n, ...

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _burst(port: int, count: int, wait: float) -> Burst:
    async def one() -> str:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(PING_CLOSE)
                answer = await asyncio.wait_for(reader.read(), wait)
            finally:
                writer.close()
        except (OSError, TimeoutError) as exc:
            return type(exc).__name__
        head, _, body = answer.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        status = parts[1].decode(errors="replace") if len(parts) > 1 else "no answer"
        return "200 pong" if status == "200" and body == b"pong" else status

    start = time.perf_counter()
    outcomes = Counter(await asyncio.gather(*(one() for _ in range(count))))
    wall = time.perf_counter() - start
    return Burst(count, outcomes["200 pong"], wall, dict(outcomes))


def run_burst(port: int, count: int, timeout: float = 30.0) -> Burst:
    """``count`` fresh connections opened at once, each ``GET /ping`` with Connection: close."""
    return asyncio.run(_burst(port, count, timeout))


# -- the download -----------------------------------------------------------------------


def download(port: int, path: str, size: int, timeout: float = 60.0) -> float:
    """GET ``path`` (``size`` bytes) on one connection; MB/s (10^6 B/s), connect to last byte."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            got = sock.recv_into(view)
            if not got:
                raise BenchError(f"download of {path}: connection closed in the head")
            head += bytes(view[:got])
        head, _, first = head.partition(b"\r\n\r\n")
        status_line = head.partition(b"\r\n")[0]
        if not status_line.startswith(b"HTTP/1.1 200"):
            why = re.search(rb"(?i)\r\nx-revgw-error:\s*(\S+)", head)
            detail = f" ({why[1].decode(errors='replace')})" if why else ""
            raise BenchError(f"download of {path}: {status_line.decode(errors='replace')}{detail}")
        length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        if not length or int(length[1]) != size:
            raise BenchError(f"download of {path}: not the {size} bytes expected: {head!r}")
        received = len(first)
        while received < size:
            got = sock.recv_into(view)
            if not got:
                raise BenchError(f"download of {path}: closed after {received} of {size} bytes")
            received += got
    seconds = time.perf_counter() - start
    return size / seconds / 1e6
