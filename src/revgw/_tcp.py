"""Raw TCP tunnels, gateway side: a public port per tunnel, each caller spliced to one connection.

A client asking ``kind=tcp port=N|auto`` in its AUTH line gets a listener on
that port of the public host (within ``--tcp-ports``). Every connection
accepted there takes a pooled tunnel connection (waiting in line up to
``--pool-wait``, as an HTTP request would), writes ``START <caller>
<public-address>`` on it and splices the two for the connection's whole
life: no HTTP, no warm reuse. When the tunnel's last client leaves, the port
stays open ``--tcp-linger`` seconds (judged by the gateway's clock), so a
client that reconnects keeps its port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import anyio

from . import _handshake as hs
from ._address import parse_address, peer_of
from ._clock import NEVER
from ._errors import AccessDenied, PoolTimeout, TunnelOffline
from ._settings import tcp_port_range
from ._splice import Splice

if TYPE_CHECKING:
    from ._gateway import Gateway
    from ._tunnel_conn import TunnelConnection

log = logging.getLogger("revgw.gateway")


@dataclass
class TcpPort:
    """One public TCP listener and the tunnel it serves."""

    tunnel: str
    port: int
    sock: socket.socket
    server: asyncio.Server | None = None
    closes_at: float = NEVER  # set while the tunnel has no client (the linger)


class TcpPorts:
    """All of a gateway's TCP tunnel listeners: claimed at handshakes, closed after the linger."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.allowed = tcp_port_range(gateway.settings.tcp_ports)
        self.by_tunnel: dict[str, TcpPort] = {}
        self.callers: set[TcpCaller] = set()  # accepted, not yet spliced

    def check_http(self, tunnel: str) -> None:
        """An HTTP client may not join a TCP tunnel's pool."""
        entry = self.by_tunnel.get(tunnel)
        if entry is not None:
            raise AccessDenied(
                f"tunnel '{tunnel}' is a TCP tunnel (port {entry.port}): start this client "
                f"with --tcp {entry.port}, or use another --tunnel"
            )

    def claim(self, tunnel: str, wanted: str, hosts: tuple[str, ...]) -> int:
        """Tunnel ``tunnel``'s public port, listening from now; AccessDenied says why not."""
        settings = self.gateway.settings
        if not self.allowed:
            raise AccessDenied("TCP tunnels are not enabled on this gateway (no --tcp-ports)")
        if hosts:
            raise AccessDenied("a TCP tunnel has no Host names: drop --host")
        entry = self.by_tunnel.get(tunnel)
        if entry is not None:
            if wanted != "auto" and int(wanted) != entry.port:
                raise AccessDenied(
                    f"TCP tunnel '{tunnel}' already listens on port {entry.port}, not {wanted}"
                )
            return entry.port
        http = self.gateway.registry.tunnels.get(tunnel)
        if tunnel == settings.default_tunnel or (http is not None and http.online):
            raise AccessDenied(
                f"tunnel '{tunnel}' is an HTTP tunnel on this gateway: give the TCP tunnel "
                "another --tunnel name"
            )
        taken = {e.port: e.tunnel for e in self.by_tunnel.values()}
        if wanted == "auto":
            candidates = [p for p in self.allowed if p not in taken]
        else:
            port = int(wanted)
            if port not in self.allowed:
                raise AccessDenied(
                    f"port {port} is outside this gateway's TCP ports ({settings.tcp_ports})"
                )
            if port in taken:
                raise AccessDenied(
                    f"port {port} belongs to TCP tunnel '{taken[port]}'; your token's "
                    f"tunnel '{tunnel}' cannot join it"
                )
            candidates = [port]
        host = parse_address(settings.listen).host or None
        error = "no free port"
        for port in candidates:
            try:
                sock = socket.create_server((host or "", port), backlog=1024)
            except OSError as exc:
                error = exc.strerror or str(exc)
                continue
            sock.setblocking(False)
            entry = self.by_tunnel[tunnel] = TcpPort(tunnel, port, sock)
            self.gateway.task_group.start_soon(self._serve, entry)
            log.info("TCP tunnel '%s' listens on public port %d", tunnel, port)
            return port
        where = f"port {wanted}" if wanted != "auto" else f"ports {settings.tcp_ports}"
        raise AccessDenied(f"cannot listen on {where}: {error}")

    async def _serve(self, entry: TcpPort) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(lambda: TcpCaller(self, entry), sock=entry.sock)
        except OSError as exc:
            log.error("TCP tunnel '%s': cannot serve port %d: %s", entry.tunnel, entry.port, exc)
            self._close(entry)
            return
        if self.by_tunnel.get(entry.tunnel) is not entry:  # closed meanwhile
            server.close()
            return
        entry.server = server

    def check_deadlines(self, now: float) -> None:
        """Called by the gateway's clock: start, cancel or end each port's linger."""
        for entry in list(self.by_tunnel.values()):
            tunnel = self.gateway.registry.tunnels.get(entry.tunnel)
            if tunnel is not None and tunnel.online:
                entry.closes_at = NEVER
            elif entry.closes_at == NEVER:
                entry.closes_at = now + self.gateway.settings.tcp_linger
            elif now >= entry.closes_at:
                log.info(
                    "TCP tunnel '%s' has had no client for %g s: closing public port %d",
                    entry.tunnel,
                    self.gateway.settings.tcp_linger,
                    entry.port,
                )
                self._close(entry)

    def _close(self, entry: TcpPort) -> None:
        if self.by_tunnel.get(entry.tunnel) is entry:
            del self.by_tunnel[entry.tunnel]
        if entry.server is not None:
            entry.server.close()
        else:
            entry.sock.close()

    def close(self) -> None:
        """The gateway stops (or drains): no new TCP callers."""
        for entry in list(self.by_tunnel.values()):
            self._close(entry)
        for caller in list(self.callers):
            caller.close()


class TcpCaller(asyncio.Protocol):
    """One connection to a TCP tunnel's public port, until it is spliced (or turned away)."""

    def __init__(self, ports: TcpPorts, entry: TcpPort) -> None:
        self.ports = ports
        self.entry = entry
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self._scope: anyio.CancelScope | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()  # the caller's bytes wait for the splice
        self.peer = peer_of(self.transport.get_extra_info("peername"))
        gateway = self.ports.gateway
        if gateway.draining or gateway.caller_refused() is not None:
            self.transport.abort()
            return
        self.ports.callers.add(self)
        tunnel = gateway.registry.tunnels.get(self.entry.tunnel)
        conn = tunnel.take() if tunnel is not None else None
        if conn is not None:
            self._pair(conn)
        else:
            gateway.task_group.start_soon(self._wait)

    async def _wait(self) -> None:
        gateway = self.ports.gateway
        tunnel = gateway.registry.tunnel(self.entry.tunnel)
        with anyio.CancelScope() as self._scope:
            try:
                conn = await tunnel.acquire(gateway.settings.pool_wait)
            except (PoolTimeout, TunnelOffline) as exc:
                log.warning("TCP port %d: closing caller %s: %s", self.entry.port, self.peer, exc)
                self.close()
                return
            self._pair(conn)

    def _pair(self, conn: TunnelConnection) -> None:
        assert self.transport is not None
        self.ports.callers.discard(self)
        gateway = self.ports.gateway
        if self.transport.is_closing():  # the caller left while we waited
            if conn.tunnel is not None:
                conn.tunnel.offer(conn)
            return

        def closed(splice: Splice) -> None:
            gateway.splices.discard(splice)
            conn.splice_closed()
            gateway.caller_moved_on()

        public = peer_of(self.transport.get_extra_info("sockname"))
        tunnel_transport = conn.detach()
        tunnel_transport.write(hs.start_line(self.peer, public))
        splice = Splice(on_closed=closed)
        gateway.splices.add(splice)
        Splice.adopt(splice.b, tunnel_transport)
        Splice.adopt(splice.a, self.transport)
        self.transport.resume_reading()
        log.info("[%s] TCP caller %s on port %d", conn.name, self.peer, self.entry.port)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ports.callers.discard(self)
        if self._scope is not None:
            self._scope.cancel()  # a connection handed over too late goes back (acquire)

    def close(self) -> None:
        self.ports.callers.discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
