"""One tunnel connection, gateway side: from handshake to close.

::

    HANDSHAKE --AUTH ok--> IDLE --PING--> PINGED --PONG--> IDLE
                            |                                |
                            +--------START + request---------+--> PAIRED
    PAIRED --response ends, both sides keep-alive--> WARM --request--> PAIRED
    any --EOF, error, missed PONG, timeout--> CLOSED

Only IDLE and WARM connections sit in the pool, so a connection with a PING
outstanding is never paired, and one that hit EOF is gone before anyone can
take it. While PAIRED, the bytes from the client belong to the exchange.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from typing import TYPE_CHECKING, Protocol, cast

from . import _handshake as hs
from ._address import peer_of
from ._clock import NEVER
from ._errors import AccessDenied, GatewayBusy, ProtocolError
from ._http import ResponseReader
from ._tokens import access_from_hello

if TYPE_CHECKING:
    from ._gateway import Gateway
    from ._pool import Tunnel

log = logging.getLogger("revgw.gateway")


class TunnelState(enum.Enum):
    HANDSHAKE = "handshake"
    IDLE = "idle"
    PINGED = "pinged"
    PAIRED = "paired"
    WARM = "warm"
    SPLICED = "spliced"  # handed to a raw splice (an upgrade): no longer ours
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value


POOLED = (TunnelState.IDLE, TunnelState.WARM)


class Upstream(Protocol):
    """What a paired tunnel connection reports to the exchange using it."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_eof(self) -> None: ...
    def upstream_lost(self) -> None: ...
    def upstream_paused(self, paused: bool) -> None: ...
    @property
    def caller_address(self) -> str: ...


class TunnelConnection(asyncio.Protocol):
    def __init__(self, gateway: Gateway, number: int) -> None:
        self.gateway = gateway
        self.number = number
        self.name = f"#{number}"
        self.state = TunnelState.HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.tunnel: Tunnel[TunnelConnection] | None = None
        self.client = ""
        self.exchange: Upstream | None = None
        self._reader = hs.LineReader()
        self._challenge = hs.Challenge.new(gateway.settings.heartbeat)
        self._responses: ResponseReader | None = None  # made when first paired
        # Every state change is logged at debug level: a line per change is
        # too dear to even consider, twice per request, unless asked for.
        self._trace = log.isEnabledFor(logging.DEBUG)
        self.deadline = NEVER  # when the current state has lasted too long

    def __repr__(self) -> str:
        return f"<TunnelConnection {self.name} {self.state.value}>"

    # --- the one place the state changes ----------------------------------------

    def _move(self, state: TunnelState, timeout: float | None = None) -> None:
        if self._trace:
            log.debug("[%s] %s -> %s", self.name, self.state, state)
        old = self.state
        self.state = state
        self.deadline = NEVER if timeout is None else time.monotonic() + timeout
        tunnel = self.tunnel
        if tunnel is None:
            return
        if old in POOLED and state not in POOLED:
            tunnel.withdraw(self)
        if state is TunnelState.CLOSED:
            tunnel.leave(self, self.client)
            if self.client not in tunnel.clients:
                tunnel.draining_clients.discard(self.client)
                log.info("[%s] client %s left tunnel '%s'", self.name, self.client, tunnel.name)
        elif state is TunnelState.IDLE:
            tunnel.offer(self)
        elif state is TunnelState.WARM:
            tunnel.offer(self, warm=True)

    def check_deadline(self, now: float) -> None:
        """Called by the gateway's clock."""
        if now >= self.deadline:
            self.deadline = NEVER
            self._timed_out()

    def _timed_out(self) -> None:
        state = self.state
        if state is TunnelState.HANDSHAKE:
            log.warning("tunnel port: %s sent no handshake in time; closing", self.peer)
            self.close()
        elif state is TunnelState.IDLE:
            self._ping()
        elif state is TunnelState.PINGED:
            log.warning("[%s] missed a PONG from client %s; dropping it", self.name, self.client)
            self.close()
        elif state is TunnelState.WARM:
            log.debug(
                "[%s] warm for %gs unused; closing", self.name, self.gateway.settings.warm_timeout
            )
            self.close()

    # --- asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_of(self.transport.get_extra_info("peername"))
        address = self.peer.rpartition(":")[0].strip("[]")
        blocked = self.gateway.auth_failures.blocked_for(address, time.monotonic())
        if blocked:
            # Refused before any work (no nonce, no HMAC), and quietly: the log
            # line was written when the address got blocked.
            self.transport.write(
                hs.busy_line(
                    f"too many failed attempts from {address}; retry in {math.ceil(blocked)} s"
                )
            )
            self.close()
            return
        self.transport.write(self._challenge.line())
        self._move(TunnelState.HANDSHAKE, self.gateway.settings.handshake_timeout)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is TunnelState.CLOSED:
            return
        if state is TunnelState.PAIRED:
            assert self.exchange is not None
            self.exchange.upstream_data(data)
            return
        if state is TunnelState.WARM:
            log.warning("[%s] the private server sent bytes nobody asked for; closing", self.name)
            self.close()
            return
        self._reader.feed(data)
        try:
            while self.state in (TunnelState.HANDSHAKE, TunnelState.IDLE, TunnelState.PINGED):
                line = self._reader.next_line()
                if line is None:
                    return
                self._line(line)
        except ProtocolError as exc:
            where = "handshake" if self.state is TunnelState.HANDSHAKE else "idle protocol"
            log.warning("tunnel port: %s broke the %s (%s); closing", self.peer, where, exc)
            if self.transport is not None:
                self.transport.write(hs.denied_line("malformed handshake"))
            self.close()

    def _line(self, line: bytes) -> None:
        if self.state is TunnelState.HANDSHAKE:
            self._authenticate(hs.parse_hello(line))
        elif line == b"PONG" and self.state is TunnelState.PINGED:
            self._move(TunnelState.IDLE, self.gateway.settings.heartbeat)
        elif hs.is_drain(line):
            self._client_draining()
        else:
            raise ProtocolError(f"unexpected line {line[:40]!r} while {self.state.value}")

    def _authenticate(self, hello: hs.Hello) -> None:
        assert self.transport is not None
        gateway = self.gateway
        tenant = gateway.tokens.find(hello.key)
        try:
            try:
                if tenant is None:
                    raise AccessDenied("unknown token")
                hs.verify_hello(tenant.token, self._challenge, hello)
            except AccessDenied:
                self._auth_failed()
                raise
            tenant.check(hello.tunnel, hello.hosts)
            self._check_limits(hello)
            access = tenant.access_for(hello.tunnel, access_from_hello(hello.basic, hello.cidrs))
            tcp_port = 0
            if hello.tcp_port:
                tcp_port = gateway.tcp.claim(hello.tunnel, hello.tcp_port, hello.hosts)
            else:
                gateway.tcp.check_http(hello.tunnel)
            try:
                tunnel = gateway.registry.claim(hello.tunnel, hello.hosts, access)
            except ValueError as exc:
                raise AccessDenied(str(exc)) from None
        except GatewayBusy as exc:
            self._refuse("busy", "busy for", hs.busy_line(str(exc)), hello, exc)
            return
        except AccessDenied as exc:
            self._refuse("denied", "denied", hs.denied_line(str(exc)), hello, exc)
            return
        gateway.stats.handshakes["accepted"] += 1
        self.transport.write(hs.ready_line(tenant.token, self._challenge, hello, tcp_port))
        self.name = f"{hello.tunnel}#{self.number}"
        self.client = hello.client
        if hello.client not in tunnel.clients:
            hosts = ", ".join(hello.hosts) or "no hosts"
            if not access.empty:
                hosts += f"; access: {access.describe()}"
            log.info(
                "[%s] client %s joined tunnel '%s' from %s (%s)",
                self.name,
                hello.client,
                tunnel.name,
                self.peer,
                hosts,
            )
            gateway.stats.client_joined(tunnel.name, hello.client, self.peer)
        self.tunnel = tunnel
        tunnel.join(self, hello.client)
        self._move(TunnelState.IDLE, gateway.settings.heartbeat)

    def _auth_failed(self) -> None:
        """Count a failed authentication against this source address; log if it gets blocked."""
        address = self.peer.rpartition(":")[0].strip("[]")
        failures = self.gateway.auth_failures
        block = failures.blocked_for(address, time.monotonic())
        new_block = failures.failed(address, time.monotonic())
        if new_block and not block:
            log.warning(
                "tunnel port: %s failed to authenticate too often (--max-auth-failures %d);"
                " refusing it for %g s",
                address,
                failures.limit,
                new_block,
            )

    def _check_limits(self, hello: hs.Hello) -> None:
        """Raise GatewayBusy if this connection would take its client or tunnel over a limit.

        Checked after the token, so only an authenticated connection counts
        against (or is refused by) another's limit; a silent or failed one
        never holds a slot.
        """
        settings = self.gateway.settings
        tunnel = self.gateway.registry.tunnels.get(hello.tunnel)
        if tunnel is None:
            return
        if tunnel.clients.get(hello.client, 0) >= settings.max_conns_per_client:
            raise GatewayBusy(
                f"client {hello.client} already holds {settings.max_conns_per_client} "
                f"connections (--max-conns-per-client); retry later or lower --pool"
            )
        if len(tunnel.live) >= settings.max_conns_per_tunnel:
            raise GatewayBusy(
                f"tunnel '{hello.tunnel}' already holds {settings.max_conns_per_tunnel} "
                f"connections (--max-conns-per-tunnel); retry later"
            )

    def _refuse(self, result: str, what: str, line: bytes, hello: hs.Hello, exc: Exception) -> None:
        """Answer a handshake with ``line`` (BUSY or DENIED): logged, counted, closed."""
        self.gateway.handshake_refused(
            f"{what} {self.peer} (client {hello.client}, tunnel '{hello.tunnel}'): {exc}"
        )
        self.gateway.stats.handshakes[result] += 1
        assert self.transport is not None
        self.transport.write(line)
        self.close()

    def _ping(self) -> None:
        assert self.transport is not None
        self.transport.write(hs.PING)
        self._move(TunnelState.PINGED, self.gateway.settings.heartbeat)

    def eof_received(self) -> bool:
        if self.state is TunnelState.PAIRED and self.exchange is not None:
            self.exchange.upstream_eof()
        elif self.state not in (TunnelState.CLOSED, TunnelState.SPLICED):
            # Leave the pool now: connection_lost comes one loop callback later, and
            # a request read in between would be handed this dead connection (a 502
            # where a live connection or "tunnel offline" was due).
            self._move(TunnelState.CLOSED)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        exchange, self.exchange = self.exchange, None
        if self.state not in (TunnelState.CLOSED, TunnelState.SPLICED):
            self._move(TunnelState.CLOSED)
        if exchange is not None:
            exchange.upstream_lost()
        self.gateway.tunnel_conns.discard(self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused(False)

    # --- used by the exchange --------------------------------------------------------

    @property
    def usable(self) -> bool:
        """In the pool and not going away (a reset closes the transport before we hear of it)."""
        transport = self.transport
        return self.state in POOLED and transport is not None and not transport.is_closing()

    def pair(self, exchange: Upstream, head: bytes) -> None:
        """Carry one request: ``START`` first if the client has not spliced yet."""
        assert self.transport is not None and self.state in POOLED
        fresh = self.state is TunnelState.IDLE
        self.exchange = exchange
        self._move(TunnelState.PAIRED)
        self.transport.write(hs.start_line(exchange.caller_address) + head if fresh else head)

    def response_reader(self) -> ResponseReader:
        """The reader for responses on this connection: one for all its requests."""
        if self._responses is None:
            self._responses = ResponseReader()
        return self._responses

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def release(self, reusable: bool) -> None:
        """The exchange is over: keep the connection warm if it can carry another."""
        self.exchange = None
        if self.state is not TunnelState.PAIRED:
            return
        tunnel = self.tunnel
        client_draining = tunnel is not None and self.client in tunnel.draining_clients
        stopping = self.gateway.draining or client_draining
        # Stopping or not, a caller already waiting in line takes it (``offer``):
        # during a drain no new connection comes, and closing this one could take
        # the tunnel offline under that caller.
        waited_for = tunnel is not None and tunnel.waiting_count > 0
        if reusable and self.gateway.settings.max_warm > 0 and (waited_for or not stopping):
            self._move(TunnelState.WARM, self.gateway.settings.warm_timeout)
        else:
            self.close()

    def detach(self) -> asyncio.Transport:
        """Hand the transport to a raw splice (after ``101``).

        It is no longer pooled, but it still counts as its client's live
        connection until ``splice_closed``: a tunnel whose connections are all
        upgraded is busy, not offline.
        """
        assert self.transport is not None
        self.exchange = None
        self._move(TunnelState.SPLICED)
        self.gateway.tunnel_conns.discard(self)
        return self.transport

    def splice_closed(self) -> None:
        """The raw splice this connection was handed to has ended."""
        self._move(TunnelState.CLOSED)

    def _client_draining(self) -> None:
        """The client is stopping: close its warm connections now and keep none warm later."""
        tunnel = self.tunnel
        assert tunnel is not None
        log.info("[%s] client %s is draining", self.name, self.client)
        tunnel.draining_clients.add(self.client)
        for conn in list(self.gateway.tunnel_conns):
            ours = conn.tunnel is tunnel and conn.client == self.client
            if ours and conn.state is TunnelState.WARM:
                conn.close()
        self.close()

    def drain(self) -> None:
        """The gateway is stopping: idle ones are told so (re-dial elsewhere) and closed.

        A paired connection finishes its exchange and then closes (``release``).
        """
        if self.transport is None:
            return
        if self.state in (TunnelState.IDLE, TunnelState.PINGED):
            self.transport.write(hs.drain_line())
            self.close()
        elif self.state is TunnelState.HANDSHAKE:
            self.transport.write(hs.busy_line("the gateway is stopping"))
            self.close()
        elif self.state is TunnelState.WARM:
            self.close()

    def close(self) -> None:
        """Close now; the connection leaves the pool at once, not when the socket is gone."""
        if self.state not in (TunnelState.CLOSED, TunnelState.SPLICED):
            self._move(TunnelState.CLOSED)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
