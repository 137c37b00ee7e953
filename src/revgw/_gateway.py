"""The gateway: a public HTTP port for callers, a tunnel port for clients.

It never dials anyone. Clients dial the tunnel port ahead of need; each
request on the public port is paired with one of those connections for
exactly the time of that request and its response.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import replace
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ._address import parse_address, peer_of
from ._admin import AdminServer, gateway_routes, start_admin
from ._caller import CallerConnection, cork_listeners
from ._clock import tick_for
from ._errors import ConfigError, TooManyConnections
from ._http import TrustedProxies
from ._limits import AuthFailures, BurstLog
from ._metrics import GatewayStats
from ._pool import Registry
from ._public_port import PublicPort, open_listeners
from ._settings import GatewaySettings
from ._splice import Splice
from ._tcp import TcpPorts
from ._tls import TlsHandOff, file_fingerprint, server_context
from ._tokens import Tokens, load_tokens
from ._tunnel_conn import TunnelConnection
from ._util import unwrap_group

log = logging.getLogger("revgw.gateway")


def new_token() -> str:
    """A random token of 192 bits, in hex: it never starts with "-", so the printed
    ``revgw client ... --token TOKEN`` command line cannot mistake it for a flag."""
    return secrets.token_hex(24)


class Gateway:
    """Run a gateway: an async context manager.

    ``async with Gateway(listen="0.0.0.0:9000", token=...) as gw:`` binds
    both ports on enter (``gw.address`` and ``gw.tunnel_address`` tell where,
    also when port 0 was asked) and closes every connection on exit. Without
    a token or a tokens file one is generated: read it from ``gw.token``
    (None with ``tokens=FILE``; see ``reload_tokens``). Raises ConfigError
    on enter if a port cannot be bound.
    """

    def __init__(self, settings: GatewaySettings | None = None, /, **overrides: Any) -> None:
        self.settings = replace(settings, **overrides) if settings else GatewaySettings(**overrides)
        self.token: str | None = None
        if self.settings.tokens is not None:
            self.tokens = load_tokens(self.settings.tokens)
        else:
            self.token = self.settings.token or new_token()
            self.tokens = Tokens.single(self.token)
        self.registry: Registry[TunnelConnection] = Registry(
            self.settings.default_tunnel, self.settings.max_warm
        )
        self.callers: set[CallerConnection] = set()
        self.tunnel_conns: set[TunnelConnection] = set()
        self.splices: set[Splice] = set()  # upgraded (e.g. WebSocket) connections
        self.auth_failures = AuthFailures(
            self.settings.max_auth_failures, self.settings.auth_failure_window
        )
        self._refused_callers = BurstLog()
        self._refused_handshakes = BurstLog()  # BUSY/DENIED answers on the tunnel port
        self._latest_refusal = ""
        self.tcp = TcpPorts(self)  # raw TCP tunnels' public ports (_tcp.py)
        self.stats = GatewayStats()  # counters the admin listener reports (_metrics.py)
        self.admin: AdminServer | None = None
        self.address = ""
        self.tunnel_address = ""
        # Callers whose X-Forwarded-* headers are believed (--trusted-proxies).
        self.trusted_proxies = TrustedProxies.of(self.settings.trusted_proxies)
        # What X-Forwarded-Proto tells the private server.
        self.public_scheme = "https" if self.settings.public_tls_cert else "http"
        # Whether callers' sockets start corked (``cork_listeners``): set when the port opens.
        self.callers_corked = False
        self._task_group: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._conn_count = 0
        self.draining = False  # set by drain(): no new work, finish what is in flight
        self._servers: list[asyncio.Server] = []
        self._quieter = anyio.Event()  # set when a caller or splice goes, while draining
        # The HTTPS public port and how it makes callers: a drain takes its queue (_adopt).
        self._public: tuple[asyncio.Server, Callable[[], asyncio.Protocol], dict[str, Any]] | None
        self._public = None
        self._plain_port: PublicPort | None = None  # the public port without TLS (_public_port.py)

    @property
    def task_group(self) -> TaskGroup:
        assert self._task_group is not None, "the gateway is not running"
        return self._task_group

    def __repr__(self) -> str:
        tunnels = ", ".join(repr(t) for t in self.registry.tunnels.values())
        return f"<Gateway {self.address} tunnels=[{tunnels}] callers={len(self.callers)}>"

    async def __aenter__(self) -> Gateway:
        stack = AsyncExitStack()
        try:
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._task_group.cancel_scope.cancel)
            self._task_group.start_soon(self._run_clock)
            loop = asyncio.get_running_loop()
            settings = self.settings
            public_factory = _secured(
                lambda: CallerConnection(self),
                cert=settings.public_tls_cert,
                key=settings.public_tls_key,
                timeout=settings.header_timeout,
                port_name="public port",
            )
            tunnel_factory = _secured(
                self._new_tunnel_conn,
                cert=settings.tls_cert,
                key=settings.tls_key,
                timeout=settings.handshake_timeout,
                port_name="tunnel port",
            )
            if public_factory[1]:  # HTTPS: the loop's transports from the first byte
                public = await _serve(loop, public_factory, settings.listen)
                self._public = (public, *public_factory)
                stack.push_async_callback(_close_server, public)
                self._servers.append(public)
                public_sockets: list[Any] = list(public.sockets)
            else:
                port = self._plain_port = PublicPort(
                    _listen(settings.listen),
                    functools.partial(CallerConnection, self),  # (a lambda would be interpreted)
                    self._task_group.start_soon,
                )
                stack.callback(port.close)
                self.callers_corked = cork_listeners(port.listeners)
                port.start()
                public_sockets = list(port.listeners)
            tunnel = await _serve(loop, tunnel_factory, settings.tunnel_listen)
            stack.push_async_callback(_close_server, tunnel)
            self._servers.append(tunnel)
            stack.callback(self._close_connections)
            self.admin = await start_admin(gateway_routes(self), settings.admin, "gateway")
            if self.admin is not None:
                stack.push_async_callback(self.admin.aclose)
        except BaseException:
            await stack.aclose()
            raise
        self.address = peer_of(public_sockets[0].getsockname())
        self.tunnel_address = peer_of(tunnel.sockets[0].getsockname())
        self._stack = stack
        log.info(
            "gateway listening: callers on %s, tunnel clients on %s%s%s",
            self.address,
            self.tunnel_address,
            "; HTTPS on the public port" if self.settings.public_tls_cert else "",
            "; TLS on the tunnel port" if self.settings.tls_cert else "",
        )
        if self.settings.tls_cert:
            log.info(
                "tunnel certificate %s (clients can pin it with --fingerprint)",
                file_fingerprint(self.settings.tls_cert),
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        with unwrap_group():
            await self._stack.__aexit__(exc_type, exc, tb)

    def reload_tokens(self) -> str:
        """Re-read the tokens file: new handshakes use the new grants, live connections stay.

        Returns a one-line summary for the log. Raises ConfigError, keeping
        the tokens in use, if the file is now unusable or none was given.
        """
        if self.settings.tokens is None:
            raise ConfigError("no --tokens file to reload (this gateway uses one --token)")
        tokens = load_tokens(self.settings.tokens)
        old = {t.name for t in self.tokens.tenants.values()}
        new = {t.name for t in tokens.tenants.values()}
        self.tokens = tokens
        summary = f"{len(new)} tenant(s)"
        if new - old:
            summary += ", added " + ", ".join(sorted(new - old))
        if old - new:
            summary += ", removed " + ", ".join(sorted(old - new))
        return summary

    async def drain(self, grace: float | None = None) -> None:
        """Stop taking work, let in-flight requests finish for up to ``grace`` s, cut the rest.

        Both listening sockets close (a new caller or client is refused), idle
        tunnel connections are told DRAIN so their clients re-dial (elsewhere,
        behind a load balancer), idle callers are closed and busy ones get
        ``Connection: close`` on their answer. Returns at once when nothing is
        in flight; the connections are gone when it returns.
        """
        grace = self.settings.grace if grace is None else grace
        with anyio.move_on_after(grace):
            if not self.draining:
                self.draining = True
                # Connections the kernel completed but nobody accepted yet:
                # closing the port would reset them, after a connect that worked.
                queued = _accept_queued(self._public[0]) if self._public else []
                for server in self._servers:
                    server.close()
                self.tcp.close()
                if self._plain_port is not None:
                    await self._plain_port.stop_accepting()
                await self._adopt(queued)
                busy = len(self.callers) + len(self.splices)
                log.info(
                    "draining: refusing new connections; %d in flight, grace %g s", busy, grace
                )
                for caller in list(self.callers):
                    caller.drain()
                # The idle tunnel connections stay until every caller connected
                # before the drain has sent its first request (or left: the
                # header timeout bounds it): that request needs one of them.
                await self._until(lambda: not self._first_requests_to_come())
                for conn in list(self.tunnel_conns):
                    conn.drain()
            await self._until(lambda: not (self.callers or self.splices))
        left = len(self.callers) + len(self.splices)
        if left:
            log.warning("grace of %g s over: cutting %d connection(s) still in flight", grace, left)
        self._close_connections()

    def _first_requests_to_come(self) -> bool:
        """Some caller has connected but not sent its first request.

        Every caller is told of its connection when it is made (the public
        port's accept, or the TLS hand-off), so ``callers`` holds them all.
        """
        return any(c.awaiting_first_request for c in self.callers)

    def caller_moved_on(self) -> None:
        """A caller arrived, sent its first request or ended (or a splice did): a drain
        may be waiting for that (``_until``)."""
        if self.draining:
            self._quieter.set()

    async def _until(self, done: Callable[[], bool]) -> None:
        """Wait, during a drain, until ``done()``: it is asked again whenever a caller moves on."""
        while not done():
            await self._quieter.wait()
            self._quieter = anyio.Event()

    async def _adopt(self, queued: list[socket.socket]) -> None:
        """Serve connections taken from the public port's queue, as if it had accepted them."""
        if not queued or self._public is None:
            return
        loop = asyncio.get_running_loop()
        _, factory, tls = self._public
        for sock in queued:
            try:
                await loop.connect_accepted_socket(factory, sock, **tls)
            except OSError as exc:  # a TLS handshake that timed out included
                log.info("draining: a queued caller could not be taken on (%s)", exc)
                sock.close()

    async def run(self) -> None:
        """Serve until cancelled (the CLI's way)."""
        async with self:
            await anyio.sleep_forever()

    async def _run_clock(self) -> None:
        """Every tick, let each connection and exchange act on its passed deadline (_clock.py)."""
        settings = self.settings
        tick = tick_for(
            settings.heartbeat,
            settings.handshake_timeout,
            settings.header_timeout,
            settings.idle_timeout,
            settings.upstream_timeout,
            settings.warm_timeout,
            *([settings.tcp_linger] if settings.tcp_ports and settings.tcp_linger > 0 else []),
        )
        while True:
            await anyio.sleep(tick)
            now = time.monotonic()
            for conn in list(self.tunnel_conns):
                conn.check_deadline(now)
            for caller in list(self.callers):
                caller.check_deadlines(now)
            self.tcp.check_deadlines(now)
            self._log_refused(self._refused_callers.flush(now))
            self._log_refused_handshakes(self._refused_handshakes.flush(now))

    def caller_refused(self) -> TooManyConnections | None:
        """A TooManyConnections to answer if a new public connection is one too many.

        Logged once per second at most, with a count, not once per connection.
        """
        limit = self.settings.max_callers
        if len(self.callers) + len(self.splices) < limit:
            return None
        self._log_refused(self._refused_callers.note(time.monotonic()))
        return TooManyConnections(
            f"the gateway is at its limit of {limit} open connections; retry shortly"
        )

    def _log_refused(self, count: int) -> None:
        if count:
            log.warning(
                "public port: refused %d connection(s): --max-callers %d reached",
                count,
                self.settings.max_callers,
            )

    def handshake_refused(self, message: str) -> None:
        """Log a refused handshake: the first of a burst in full, the rest once a second.

        A pool bigger than ``--max-conns-per-client`` allows, or a client with a
        wrong token, is refused again at every retry; a line each was a flood.
        """
        self._latest_refusal = message
        self._log_refused_handshakes(self._refused_handshakes.note(time.monotonic()))

    def _log_refused_handshakes(self, count: int) -> None:
        if count == 1:
            log.warning("tunnel port: %s", self._latest_refusal)
        elif count:
            log.warning(
                "tunnel port: %d more handshake(s) refused in the last %g s; the latest: %s",
                count,
                self._refused_handshakes.interval,
                self._latest_refusal,
            )

    def _new_tunnel_conn(self) -> TunnelConnection:
        self._conn_count += 1
        conn = TunnelConnection(self, self._conn_count)
        self.tunnel_conns.add(conn)
        return conn

    def _close_connections(self) -> None:
        self.tcp.close()
        for splice in list(self.splices):
            splice.close()
        for conn in list(self.tunnel_conns):
            conn.close()
        for caller in list(self.callers):
            if caller.transport is not None:
                caller.transport.close()


def _secured(
    factory: Callable[[], asyncio.Protocol],
    *,
    cert: str | None,
    key: str | None,
    timeout: float,
    port_name: str,
) -> tuple[Callable[[], asyncio.Protocol], dict[str, Any]]:
    """``factory`` itself without a certificate; else a TLS hand-off and create_server's options."""
    if cert is None or key is None:
        return factory, {}
    public = port_name == "public port"
    flag = "--public-tls-cert" if public else "--tls-cert"
    context = server_context(cert, key, flag, alpn=["http/1.1"] if public else None)
    options = {"ssl": context, "ssl_handshake_timeout": timeout}
    return (lambda: TlsHandOff(factory, timeout, port_name)), options


BACKLOG = 1024  # connections the kernel completes before an accept, per listening socket


@contextmanager
def _listening_on(address: str) -> Iterator[tuple[str | None, int]]:
    """``address`` as (host, port) for a listen; a failure to listen is a ConfigError."""
    host, port = parse_address(address)
    try:
        yield host or None, port
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc.strerror or exc}") from exc


def _listen(address: str) -> list[socket.socket]:
    """The plain public port's listening sockets (``PublicPort`` accepts on them itself)."""
    with _listening_on(address) as (host, port):
        return open_listeners(host, port, BACKLOG)


async def _serve(
    loop: asyncio.AbstractEventLoop,
    secured: tuple[Callable[[], asyncio.Protocol], dict[str, Any]],
    address: str,
) -> asyncio.Server:
    factory, tls = secured
    with _listening_on(address) as (host, port):
        return await loop.create_server(factory, host, port, backlog=BACKLOG, **tls)


def _accept_queued(server: asyncio.Server) -> list[socket.socket]:
    """Accept, without waiting, whatever is queued on ``server``'s listening sockets."""
    taken: list[socket.socket] = []
    for listener in server.sockets:
        with socket.socket(fileno=os.dup(listener.fileno())) as sock:  # the loop keeps its own
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. out of file descriptors: leave the rest
                    log.warning("draining: could not take a queued caller (%s)", exc)
                    break
                taken.append(conn)
    return taken


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    # Server.wait_closed() also waits for every connection (Python 3.12+), which
    # we close ourselves; a bounded wait keeps shutdown prompt either way.
    with anyio.move_on_after(1):
        await server.wait_closed()
