"""How fast a relay of revgw's shape can be here, with no parsing at all.

``python -m benchmarks.ceiling`` runs two tiny uvloop processes in revgw's
places: a "gateway" that pairs each caller's read with one of 64 pre-dialled
connections and passes bytes both ways without looking at them, and a
"client" that splices each of those to its own connection to nginx. It
assumes one read is one request and one read one response, which holds for
``GET /ping`` on loopback and nothing else: a measuring stick, not a proxy.
Its "gateway" corks its public port as revgw does (``cork_listeners``), so a
closing answer leaves with the FIN here too. Against direct nginx in the same
run, it shows what the kernel and the event loop alone cost for this shape;
the rest of revgw's cost is its own Python.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import cast

import uvloop

from revgw._caller import cork_listeners, uncork

from .env import which
from .load import run_wrk
from .procs import HOST, free_port, listening, start_nginx, wait_until

POOL = 64


class _Spliced(asyncio.Protocol):
    """One side of a splice: whatever it reads goes to its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Spliced | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer.transport if self.peer is not None else None
        if peer is not None and not peer.is_closing():
            peer.write(data)


class _Pooled(_Spliced):
    """The "client": an accepted tunnel connection, spliced to nginx once that is dialled."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self._target = target

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cast(asyncio.Transport, transport).pause_reading()
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(_Spliced, HOST, self._target)
        upstream.peer, self.peer = self, upstream
        assert self.transport is not None
        self.transport.resume_reading()


class _Caller(_Spliced):
    """The "gateway": each read takes a free pooled connection, its answer gives it back.

    Like revgw, it keeps the pooled connection alive for a caller that asked to
    close: the request goes on without ``Connection: close``, and the caller's
    connection is closed after the answer (whose ``keep-alive`` says ``close``).
    """

    def __init__(self, free: list[_Tunnel]) -> None:
        super().__init__()
        self._free = free
        self.closing = False
        self.corked = True  # inherited from the public port, as in revgw

    def data_received(self, data: bytes) -> None:
        tunnel = self._free.pop()
        tunnel.peer = self
        self.closing = b"Connection: close\r\n" in data
        assert tunnel.transport is not None
        tunnel.transport.write(data.replace(b"Connection: close\r\n", b""))


class _Tunnel(_Spliced):
    def __init__(self, free: list[_Tunnel]) -> None:
        super().__init__()
        self._free = free

    def data_received(self, data: bytes) -> None:
        caller = self.peer
        assert isinstance(caller, _Caller) and caller.transport is not None
        if caller.transport.is_closing():
            pass  # wrk stopped with this request in flight
        elif caller.closing:
            caller.transport.write(data.replace(b"keep-alive", b"close     ", 1))
            caller.transport.close()
        else:
            if caller.corked:  # a kept connection: uncorked before its first answer
                caller.corked = False
                uncork(caller.transport)
            caller.transport.write(data)
        self._free.append(self)


async def _serve(role: str, port: int, target: int) -> None:
    loop = asyncio.get_running_loop()
    if role == "client":
        await loop.create_server(lambda: _Pooled(target), HOST, port)
    else:
        free: list[_Tunnel] = []
        for _ in range(POOL):
            _, tunnel = await loop.create_connection(lambda: _Tunnel(free), HOST, target)
            free.append(tunnel)
        server = await loop.create_server(lambda: _Caller(free), HOST, port)
        cork_listeners(
            server.sockets
        )  # as revgw's public port: a closing answer leaves with the FIN
    await asyncio.Event().wait()


def main() -> int:
    if len(sys.argv) == 4:  # a role, started by the measuring process below
        uvloop.run(_serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
        return 0
    nginx_path, wrk = which("nginx"), which("wrk")
    if nginx_path is None or wrk is None:
        sys.stdout.write("needs nginx and wrk (make bench installs them)\n")
        return 1
    with tempfile.TemporaryDirectory() as work:
        nginx, target = start_nginx(nginx_path, Path(work), 1 << 20)
        client_port, port = free_port(), free_port()
        roles = []
        try:
            for role, listen, upstream in (
                ("client", client_port, target),
                ("gw", port, client_port),
            ):
                argv = [
                    sys.executable,
                    "-m",
                    "benchmarks.ceiling",
                    role,
                    str(listen),
                    str(upstream),
                ]
                roles.append(subprocess.Popen(argv))
                # Each listens once it is ready (the "gateway" after dialling its pool).
                wait_until(f"the {role} to listen", partial(listening, listen), timeout=20)
            for name, fresh, connections in (("keep-alive", False, 64), ("fresh", True, 16)):
                direct, relay = [], []
                for _ in range(3):
                    direct.append(run_wrk(wrk, target, connections, 5, fresh).rps)
                    relay.append(run_wrk(wrk, port, connections, 5, fresh).rps)
                d, r = statistics.median(direct), statistics.median(relay)
                sys.stdout.write(
                    f"{name}: direct {d:,.0f} req/s, "
                    f"zero-parse relay {r:,.0f} req/s, {r / d:.2f}x\n"
                )
        finally:
            for proc in roles:
                proc.kill()
                proc.wait()
            nginx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
