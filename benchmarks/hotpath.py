"""The gateway's own Python per request, with no sockets: ``python -m benchmarks.hotpath``.

Under wrk the gateway's CPU is the kernel's socket work plus revgw's Python,
and only the second is ours to cut. This drives the real ``CallerConnection``,
``Exchange`` and ``TunnelConnection`` with fake transports (writes are
counted, not sent) and times a keep-alive request and a fresh connection, so
a change to the hot path can be measured in seconds, without the noise of
four processes sharing two cores. Run it under py-spy to see where the time
goes (``py-spy record -r 2000 -- .venv/bin/python -m benchmarks.hotpath``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from revgw._caller import CallerConnection
from revgw._gateway import Gateway
from revgw._tunnel_conn import TunnelConnection, TunnelState

REQUEST = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n"
REQUEST_CLOSE = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nConnection: close\r\n\r\n"
RESPONSE = (  # what nginx answers to /ping in benchmarks/nginx.conf
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 02:14:57 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\npong"
)


class FakeTransport:
    """Enough of a transport for the gateway's protocols; closing reports the loss at once."""

    def __init__(self, protocol: asyncio.Protocol, peer: tuple[str, int]) -> None:
        self.protocol: asyncio.Protocol | None = protocol
        self.peer = peer
        self.closing = False
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            protocol, self.protocol = self.protocol, None  # as uvloop lets go of it
            if protocol is not None:
                protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def pooled_connection(gateway: Gateway) -> TunnelConnection:
    """One tunnel connection in the default tunnel's pool, as after a handshake."""
    conn = TunnelConnection(gateway, 1)
    conn.connection_made(FakeTransport(conn, ("127.0.0.1", 40000)))  # type: ignore[arg-type]
    tunnel = gateway.registry.claim("default", ())
    conn.tunnel, conn.client = tunnel, "bench"
    tunnel.join(conn, "bench")
    conn._move(TunnelState.IDLE, 5)  # (private: standing in for the handshake)
    return conn


def keep_alive(gateway: Gateway, conn: TunnelConnection, count: int) -> float:
    """Microseconds per request, ``count`` requests on one caller connection."""
    caller = CallerConnection(gateway)
    caller.connection_made(FakeTransport(caller, ("127.0.0.1", 50000)))  # type: ignore[arg-type]
    start = time.perf_counter()
    for _ in range(count):
        caller.data_received(REQUEST)
        conn.data_received(RESPONSE)
    elapsed = time.perf_counter() - start
    assert conn.state is TunnelState.WARM, "the response did not end the exchange"
    return elapsed / count * 1e6


def fresh(gateway: Gateway, conn: TunnelConnection, count: int) -> float:
    """Microseconds per request, each on a new caller connection that asks to close."""
    start = time.perf_counter()
    for number in range(count):
        caller = CallerConnection(gateway)
        transport = FakeTransport(caller, ("127.0.0.1", 50000 + number % 10000))
        caller.connection_made(transport)  # type: ignore[arg-type]
        caller.data_received(REQUEST_CLOSE)
        conn.data_received(RESPONSE)
        assert transport.closing, "a Connection: close caller was not closed"
    return (time.perf_counter() - start) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__)
    parser.add_argument("--requests", type=int, default=20000, help="per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="measurements; the best is shown")
    args = parser.parse_args(argv)
    gateway = Gateway(token="t" * 32)
    conn = pooled_connection(gateway)
    results = {}
    for name, measure in (("keep-alive", keep_alive), ("fresh connection", fresh)):
        measure(gateway, conn, max(1, args.requests // 10))  # warm up
        results[name] = min(measure(gateway, conn, args.requests) for _ in range(args.repeat))
    for name, micros in results.items():
        sys.stdout.write(f"{name}: {micros:.2f} us of the gateway's Python per request\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
