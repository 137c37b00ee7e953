"""The demo caller: GET a URL through the gateway every few seconds, print what came back.

Each request uses a fresh TCP connection and says ``Connection: close``, so
every line of output is one complete trip: producer -> gateway -> tunnel ->
private server and back. Output is one line per request: the body (``pong``)
on success, else ``error: ...`` saying what went wrong. On exit (count reached,
or cancelled by SIGINT/SIGTERM) a summary goes to stderr: sent, ok, failed by
reason, p50/p99 latency; on a terminal, stderr also shows a live progress line.

The response is read with httptools directly (revgw's ResponseReader frames
responses to pass them on; here we want the body itself).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

import anyio
import httptools

from revgw._address import format_address
from revgw._errors import ConfigError
from revgw._settings import setting


def parse_url(url: str) -> tuple[str, int, str]:
    """Split ``http://host[:port]/path`` into host, port and request target."""
    parts = urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"--url {url!r} has an invalid port") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"--url must look like http://host[:port]/path, not {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, target


@dataclass(frozen=True)
class ProducerSettings:
    url: str = setting("http://127.0.0.1:9000/ping", "the URL to GET (the gateway's)", "URL")
    interval: float = setting(1.0, "seconds between requests", "SECONDS")
    count: int | None = setting(None, "stop after N requests; exit 1 if any failed", "N")
    timeout: float = setting(10.0, "seconds one request may take", "SECONDS")

    def __post_init__(self) -> None:
        parse_url(self.url)
        if not self.interval >= 0:
            raise ConfigError(f"--interval must be 0 or more, not {self.interval}")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"--count must be 1 or more, not {self.count}")
        if not self.timeout > 0:
            raise ConfigError(f"--timeout must be greater than 0, not {self.timeout}")


@dataclass(frozen=True)
class Result:
    ok: bool  # True only for a 2xx answer
    status: int | None  # None when no answer came
    body: bytes
    error: str  # "" when ok


class _BadResponse(Exception):
    pass


class _Response:
    """Collect one response from httptools' callbacks (sans-IO: feed bytes in)."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body = bytearray()
        self.framed = False  # Content-Length or chunked; else the body ends at close
        self.head_done = False
        self.done = False

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise _BadResponse(f"invalid HTTP response ({exc})") from None

    def feed_eof(self) -> None:
        """The server closed: the end of a close-delimited body, else too early."""
        if self.head_done and not self.framed:
            self.done = True
        elif not self.done:
            raise _BadResponse("the connection closed before the response ended")

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.body.clear()  # after a 1xx interim answer, the real one starts over
        self.framed = self.head_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.done = True


def _network_error(exc: BaseException, where: str) -> str:
    """Say what failed; look behind anyio's "All connection attempts failed"."""
    if isinstance(exc, anyio.BrokenResourceError):
        return f"connection to {where} was lost"
    if isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused to {where}"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"cannot reach {where}: {reason}"


async def fetch(url: str, timeout: float) -> Result:  # noqa: ASYNC109 (a per-request budget)
    """GET ``url`` over a fresh connection; every failure becomes a Result, never an exception."""
    host, port, target = parse_url(url)
    where = format_address(host, port)
    request = f"GET {target} HTTP/1.1\r\nHost: {where}\r\nConnection: close\r\n\r\n"
    response = _Response()
    try:
        with anyio.fail_after(timeout):
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(request.encode("latin-1"))
                while not response.done:
                    try:
                        response.feed(await stream.receive())
                    except anyio.EndOfStream:
                        response.feed_eof()
    except TimeoutError:
        return Result(False, None, b"", f"no answer from {where} within {timeout:g} s")
    except _BadResponse as exc:
        return Result(False, None, b"", f"{exc} from {where}")
    except (OSError, anyio.BrokenResourceError) as exc:
        return Result(False, None, b"", _network_error(exc, where))
    body = bytes(response.body)
    if 200 <= response.status < 300:
        return Result(True, response.status, body, "")
    lines = body.decode("utf-8", "replace").strip().splitlines()
    try:
        summary = lines[0] if lines else HTTPStatus(response.status).phrase
    except ValueError:
        summary = ""
    return Result(False, response.status, body, f"{response.status} {summary}".strip())


def describe(result: Result) -> str:
    """The output line for one request."""
    if result.ok:
        return result.body.decode("utf-8", "replace").strip()
    return f"error: {result.error}"


def reason(result: Result) -> str:
    """Why a request failed, in a word: its status code, else the kind of error."""
    if result.status is not None:
        return str(result.status)
    for start, kind in (
        ("no answer", "timeout"),
        ("connection refused", "refused"),
        ("connection to", "lost"),
        ("cannot reach", "unreachable"),
    ):
        if result.error.startswith(start):
            return kind
    return "bad-response"


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Tally:
    """What the producer has seen so far, for the summary and the progress line."""

    sent: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests only

    def add(self, result: Result, seconds: float) -> None:
        self.sent += 1
        self.ok += result.ok
        if not result.ok:
            self.failures[reason(result)] += 1
        if result.status is not None:
            self.latencies.append(seconds)

    def summary(self) -> str:
        """``sent 5, ok 4, failed 1 (503: 1); latency p50 2.1 ms, p99 9.8 ms``."""
        failed = sum(self.failures.values())
        text = f"sent {self.sent}, ok {self.ok}, failed {failed}"
        if failed:
            text += " (" + ", ".join(f"{k}: {n}" for k, n in sorted(self.failures.items())) + ")"
        if self.latencies:
            p50, p99 = (percentile(self.latencies, s) * 1000 for s in (0.5, 0.99))
            text += f"; latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        return text


def say(line: str) -> None:
    print(line, flush=True)  # flushed: someone is watching, maybe through a pipe


def say_summary(line: str) -> None:
    print(f"summary: {line}", file=sys.stderr, flush=True)


async def run(
    settings: ProducerSettings,
    out: Callable[[str], None] = say,
    report: Callable[[str], None] | None = say_summary,
    progress: bool | None = None,
) -> int:
    """Request every ``interval`` seconds; with ``count``, stop after that many.

    Returns 1 if any request failed, else 0. Without ``count`` it runs until
    cancelled. A request slower than the interval delays the next one but
    does not make the following ones rush to catch up. ``report`` gets the
    summary however the run ends; ``progress`` (default: stderr is a terminal)
    keeps a ``\r``-updated line on stderr below the output lines.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    tally = Tally()
    next_start = anyio.current_time()
    try:
        while True:
            started = anyio.current_time()
            result = await fetch(settings.url, settings.timeout)
            tally.add(result, anyio.current_time() - started)
            if progress:
                sys.stderr.write("\r\x1b[K")  # clear the progress line, print above it
                sys.stderr.flush()
            out(describe(result))
            if progress:
                sys.stderr.write(f"\r{tally.summary()}")
                sys.stderr.flush()
            if settings.count is not None and tally.sent >= settings.count:
                return 1 if tally.failures else 0
            now = anyio.current_time()
            next_start = max(next_start + settings.interval, now)
            await anyio.sleep(next_start - now)
    finally:
        if progress:
            sys.stderr.write("\r\x1b[K")
        if report is not None:
            report(tally.summary())
