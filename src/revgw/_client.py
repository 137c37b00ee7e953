"""The client: keeps a pool of pre-dialled connections at the gateway.

Every connection that crosses the NAT is dialled from here, ahead of need.
Each one authenticates, then idles at the gateway answering PINGs. When the
gateway writes ``START`` it has paired the connection with a caller: this
side dials the private server, splices the two, and tells the keeper, which
dials a replacement at once so the idle count stays where the user set it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from types import TracebackType
from typing import Any, cast

import anyio
from anyio.abc import TaskGroup

from . import _handshake as hs
from ._address import Address, parse_address
from ._admin import AdminServer, client_routes, start_admin
from ._clock import NEVER
from ._errors import AccessDenied, GatewayBusy, ProtocolError, UpstreamUnreachable
from ._http import error_response
from ._proxy_protocol import proxy_header
from ._settings import ClientSettings
from ._splice import Splice
from ._tls import GatewayTrust, TlsFailed, describe_tls_error
from ._tokens import declared_fields
from ._util import unwrap_group

log = logging.getLogger("revgw.client")

# While the gateway keeps answering BUSY, the warning is said again at most this often
# (seconds); every retry in between is logged at debug level only.
BUSY_REPEAT = 300.0
# Most tunnel connections being dialled at once per gateway (_dial_many).
DIAL_AT_ONCE = 256
# Seconds between two sweeps for idle connections whose gateway went silent (_watch).
WATCH_EVERY = 1.0


class LinkState(enum.Enum):
    HANDSHAKE = "handshake"
    IDLE = "idle"
    PAIRED = "paired"
    CLOSED = "closed"


class TunnelLink(asyncio.Protocol):
    """One pooled connection, client side: handshake, idle, then a splice.

    A pool holds thousands of these for hours, so a link has slots, and lets go
    at READY of what only the handshake needs: the CHALLENGE, the AUTH line it
    answered with, and the future ``Keeper._dial`` waited on.
    """

    __slots__ = (
        "_challenge",
        "_hello",
        "_pending",
        "_reader",
        "_silence",
        "deadline",
        "keeper",
        "number",
        "ready",
        "silent",
        "state",
        "transport",
    )

    def __init__(self, keeper: Keeper, number: int) -> None:
        self.keeper = keeper
        self.number = number
        self.state = LinkState.HANDSHAKE
        self.transport: asyncio.Transport | None = None
        # Set (or failed) when the handshake ends; None once READY has been taken in.
        self.ready: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()
        self.silent = True  # nothing received yet
        self._reader = hs.LineReader()
        self._challenge: hs.Challenge | None = None
        self._hello: hs.Hello | None = None
        self._silence = 0.0  # seconds without a PING before re-dialling (from the CHALLENGE)
        self.deadline = NEVER  # while idle: re-dial if no PING came by then (Keeper._watch)
        self._pending = b""

    @property
    def name(self) -> str:
        """``tunnel#N`` for the logs (made when needed: most links never log a line)."""
        return f"{self.keeper.settings.tunnel}#{self.number}"

    def _move(self, state: LinkState) -> None:
        """The one place a link changes state."""
        if log.isEnabledFor(logging.DEBUG):  # (the name is made only to be logged)
            log.debug("[%s] %s -> %s", self.name, self.state.value, state.value)
        self.state = state
        if state in (LinkState.PAIRED, LinkState.CLOSED):
            self.keeper.lost_idle(self)
        self.keeper.idle_changed()

    def _settle(self, exc: BaseException | None) -> None:
        """End the wait for the handshake's outcome (once): READY, or why it failed."""
        ready, self.ready = self.ready, None
        if ready is None or ready.done():
            return
        if exc is None:
            ready.set_result(None)
        else:
            ready.set_exception(exc)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        if self.keeper.trust is not None:
            # Before reading the CHALLENGE: no answer derived from the token goes to
            # a gateway whose certificate is not the one we trust.
            try:
                self.keeper.trust.check(transport)
            except AccessDenied as exc:
                self.state = LinkState.CLOSED  # read nothing more
                self._fail(exc)

    def data_received(self, data: bytes) -> None:
        if self.state is LinkState.CLOSED:
            return
        self.silent = False
        self._reader.feed(data)
        try:
            while self.state in (LinkState.HANDSHAKE, LinkState.IDLE):
                line = self._reader.next_line()
                if line is None:
                    return
                if self.state is LinkState.HANDSHAKE:
                    self._handshake(line)
                else:
                    self._idle(line)
        except (ProtocolError, AccessDenied) as exc:
            self._fail(exc)

    def _handshake(self, line: bytes) -> None:
        keeper = self.keeper
        settings = keeper.settings
        assert self.transport is not None and settings.token
        if self._challenge is None:
            self._challenge = hs.parse_challenge(line)
            basic, cidrs = declared_fields(
                settings.tunnel, settings.basic_auth, settings.allow_cidr
            )
            self._hello = hs.make_hello(
                settings.token,
                self._challenge,
                settings.tunnel,
                settings.client_id,
                settings.host,
                basic=basic,
                cidrs=cidrs,
                tcp_port=settings.tcp or "",
            )
            self.transport.write(self._hello.line())
            return
        assert self._hello is not None
        port = hs.check_verdict(settings.token, self._challenge, self._hello, line)
        self._silence = 3 * self._challenge.heartbeat + 1
        self._challenge = self._hello = None  # the handshake is over: keep none of it
        if settings.tcp is not None:
            keeper.tcp_public(port)
        self._move(LinkState.IDLE)
        self._arm_watchdog()
        self._settle(None)

    def _idle(self, line: bytes) -> None:
        assert self.transport is not None
        if line == b"PING":
            self.transport.write(hs.PONG)
            self._arm_watchdog()
        elif hs.is_drain(line):
            self.keeper.gateway_draining(self)
            self.close()
        elif line.startswith(b"START"):
            caller, public = hs.parse_start(line)
            self._pending = self._reader.take_rest()
            self.transport.pause_reading()
            # Counted as in flight from now on: a drain must wait for it.
            splice = Splice(on_closed=self.keeper.splice_closed)
            self.keeper.splices.add(splice)
            self._move(LinkState.PAIRED)
            self.keeper.task_group.start_soon(self._connect_target, caller, splice, public)
        else:
            raise ProtocolError(f"unexpected line from the gateway while idle: {line[:40]!r}")

    def _arm_watchdog(self) -> None:
        """Re-dial if the gateway goes quiet: a vanished host sends no FIN."""
        self.deadline = time.monotonic() + self._silence

    def check_silence(self, now: float) -> None:
        """Called by the keeper's sweep: hang up an idle link whose gateway stopped PINGing."""
        if self.state is LinkState.IDLE and now >= self.deadline:
            log.warning(
                "[%s] no PING from the gateway for %g s; re-dialling", self.name, self._silence
            )
            self.close()

    async def _connect_target(self, caller: str, splice: Splice, public: str = "") -> None:
        settings = self.keeper.settings
        target = self.keeper.target
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(settings.dial_timeout):
                await loop.create_connection(lambda: splice.b, target.host, target.port)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            log.warning(
                "[%s] cannot reach the private server %s (%s); answering 502",
                self.name,
                settings.target,
                reason,
            )
            self.keeper.splice_closed(splice)
            self._answer_unreachable(reason)
            return
        if self.state is LinkState.CLOSED or self.transport is None:
            self.keeper.splice_closed(splice)
            splice.close()
            return
        log.info("[%s] paired: caller %s -> %s", self.name, caller, settings.target)
        if settings.proxy_protocol and splice.b.transport is not None:
            # Before any caller byte: the server learns who the caller really is.
            splice.b.transport.write(proxy_header(settings.proxy_protocol, caller, public))
        Splice.adopt(splice.a, self.transport, self._pending)
        self._pending = b""
        self.transport.resume_reading()

    def _answer_unreachable(self, reason: str) -> None:
        """Tell the caller where the chain broke, then let the gateway close."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.keeper.settings.tcp is not None:  # raw TCP: no HTTP answer, just close
            self.transport.close()
            return
        error = UpstreamUnreachable(
            f"the revgw client could not connect to the private server "
            f"{self.keeper.settings.target}: {reason}"
        )
        self.transport.write(error_response(error, keep_alive=False))
        drain = _Drain(self.transport, self.keeper.draining, self.keeper.quieter)
        self.transport.set_protocol(drain)
        self.transport.resume_reading()  # paused since START: EOF must get through

    def _fail(self, exc: Exception) -> None:
        if self.ready is not None and not self.ready.done():
            self._settle(exc)
        else:
            log.warning("[%s] %s; closing", self.name, exc)
        self.close()

    def say_draining(self) -> None:
        """Tell the gateway this client is stopping: it keeps none of our connections warm."""
        if self.state is LinkState.IDLE and self.transport is not None:
            self.transport.write(hs.drain_line("the client is stopping"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def eof_received(self) -> bool:
        if self.state is LinkState.HANDSHAKE:
            self._settle(
                ProtocolError(
                    "the gateway closed the connection during the handshake "
                    "(is this its tunnel port? does it speak TLS, needing --tls? is it overloaded?)"
                )
            )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle(exc or ConnectionResetError("connection closed"))
        if self.state is not LinkState.CLOSED:
            self._move(LinkState.CLOSED)


class _Drain(asyncio.Protocol):
    """After answering 502 ourselves: discard what the gateway still sends, close at EOF.

    Closing with unread bytes would reset the connection and could destroy
    the answer before the gateway reads it.
    """

    def __init__(
        self, transport: asyncio.Transport, owner: set[_Drain], on_gone: Callable[[], None]
    ) -> None:
        self.transport = transport
        self._owner = owner
        self._on_gone = on_gone
        owner.add(self)
        self._timer = asyncio.get_running_loop().call_later(10, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._owner.discard(self)
        self._on_gone()


class Keeper:
    """Keeps ``pool`` idle connections at one gateway address, re-dialling as needed."""

    def __init__(
        self,
        settings: ClientSettings,
        gateway: Address,
        task_group: TaskGroup,
        dial_host: str | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = gateway  # as configured: TLS verifies and remembers this name
        # one of the addresses ``gateway``'s name resolved to, when it has several
        self.dial = Address(dial_host or gateway.host, gateway.port)
        self.label = f"{gateway} ({dial_host})" if dial_host else str(gateway)
        self.on_idle_change: Callable[[], None] | None = None  # the Client's wait_ready
        self.target = parse_address(settings.target)
        self.task_group = task_group
        self.links: set[TunnelLink] = set()  # handshaking or idle
        self.splices: set[Splice] = set()  # paired: carrying (or warm for) requests
        self.draining: set[_Drain] = set()  # answered 502 themselves, closing
        self._changed = anyio.Event()
        self._idle_event = anyio.Event()
        self._count = 0
        self.dial_failures = 0  # for the admin listener, like dials and backoff
        self.backoff = 0.0  # seconds of the current wait before re-dialling
        self._dialled_once = False
        self._gateway_draining = False  # logged once per DRAIN burst
        self._scope: anyio.CancelScope | None = None
        self._stopped = False
        self._quieter = anyio.Event()  # a splice or 502 answer ended
        self.tcp_port = 0  # a TCP tunnel's public port at this gateway (READY port=)
        self.trust: GatewayTrust | None = None
        if settings.tls:
            self.trust = GatewayTrust(
                gateway,
                ca=settings.ca,
                fingerprint=settings.fingerprint,
                trust_on_first_use=settings.trust_on_first_use,
                known_gateways=settings.known_gateways,
                server_name=settings.server_name,
            )

    @property
    def idle_count(self) -> int:
        return sum(1 for link in self.links if link.state is LinkState.IDLE)

    def idle_changed(self) -> None:
        self._idle_event.set()
        self._idle_event = anyio.Event()
        if self.on_idle_change is not None:
            self.on_idle_change()

    async def wait_idle_change(self) -> None:
        await self._idle_event.wait()

    def lost_idle(self, link: TunnelLink) -> None:
        """A link stopped being idle (paired or closed): dial a replacement."""
        if link in self.links:
            self.links.discard(link)
            self._changed.set()

    def tcp_public(self, port: int) -> None:
        """READY named our TCP tunnel's public port: say so when it is new."""
        if port and port != self.tcp_port:
            self.tcp_port = port
            log.info(
                "tcp tunnel '%s' is public on gateway %s port %d",
                self.settings.tunnel,
                self.gateway.host,
                port,
            )

    def splice_closed(self, splice: Splice) -> None:
        self.splices.discard(splice)
        self.quieter()

    def quieter(self) -> None:
        self._quieter.set()
        self._quieter = anyio.Event()

    @property
    def in_flight(self) -> int:
        """Splices carrying (or warm for) requests, and 502 answers still closing."""
        return len(self.splices) + len(self.draining)

    def gateway_draining(self, link: TunnelLink) -> None:
        if not self._gateway_draining:
            self._gateway_draining = True
            log.info("gateway %s is draining; re-dialling", self.label)
        log.debug("[%s] DRAIN from the gateway", link.name)

    async def drain(self) -> None:
        """Stop dialling, close the idle links, and wait until nothing is in flight."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()
        for link in list(self.links):
            link.say_draining()
            link.close()
        while self.in_flight:
            await self._quieter.wait()

    async def run(self) -> None:
        """Fill the pool for ever (until ``drain``); return only by raising AccessDenied."""
        with anyio.CancelScope() as self._scope:
            if not self._stopped:
                self.task_group.start_soon(self._watch)
                await self._fill()

    async def _watch(self) -> None:
        """Every WATCH_EVERY s, hang up the idle links whose gateway stopped PINGing.

        One sweep for the whole pool instead of a timer per link re-made at each
        PING: that cost every idle connection a handle, a context and a bound
        method (and a libuv timer under uvloop), and 10 000 connections 2 000
        timer re-arms a second. A silent gateway is left within WATCH_EVERY s of
        3 heartbeats + 1 s.
        """
        while not self._stopped:
            await anyio.sleep(WATCH_EVERY)
            now = time.monotonic()
            for link in list(self.links):
                link.check_silence(now)

    async def _fill(self) -> None:
        """Dial what the pool lacks; after a failure, probe with one dial and grow from there.

        A failed round (refused, BUSY, timed out) is followed by a backoff and
        then by one dial, and each round that succeeds doubles the next one, until
        a round dials the whole shortfall and makes it. Re-dialling the whole
        shortfall on every retry would cost a gateway that is down, overloaded or
        capping this client (BUSY) thousands of handshakes and log lines per retry.
        """
        pool = self.settings.pool
        failures = 0  # failed rounds since the pool was last whole: the backoff grows with them
        batch = pool  # most dials in the next round
        busy = _BusyNotice()
        while True:
            missing = pool - len(self.links)
            if missing <= 0:
                await self._changed.wait()
                self._changed = anyio.Event()
                continue
            count = min(missing, batch)
            errors = await self._dial_many(count)
            denied = [e for e in errors if isinstance(e, AccessDenied)]
            if denied:
                raise denied[0]
            if not errors:
                self.backoff = 0.0
                self._gateway_draining = False
                if count < missing:  # a probe that worked: more at once, without waiting
                    batch = min(pool, 2 * batch)
                    continue
                if failures or not self._dialled_once:
                    log.info(
                        "connected to gateway %s: tunnel '%s', %d idle connections",
                        self.label,
                        self.settings.tunnel,
                        self.idle_count,
                    )
                failures = 0
                batch = pool
                busy = _BusyNotice()
                self._dialled_once = True
                continue
            failures += 1
            batch = 1
            delay = min(self.settings.max_backoff, 0.1 * 2**failures)
            delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: clients spread out
            if all(isinstance(e, GatewayBusy) for e in errors):
                busy.refused(self, errors[0], len(errors), delay)
            else:
                busy = _BusyNotice()  # the next BUSY is news again
                log.warning(
                    "gateway %s: %s; retrying in %.1f s", self.label, _describe(errors[0]), delay
                )
            self.backoff = delay
            await anyio.sleep(delay)

    @property
    def dials(self) -> int:
        """Tunnel connections dialled so far (for the admin listener)."""
        return self._count

    async def _dial_many(self, count: int) -> list[Exception]:
        """Dial ``count`` connections, DIAL_AT_ONCE at most at a time; stop at the first failure.

        Dialling a pool of 10 000 all at once made 10 000 tasks, timers and frames
        live at the same moment: memory the allocator keeps after they end,
        scattered among the connections that stay (about 7 KiB per pooled
        connection of a pool of 10 000). A failure ends the round once the dials under way are done,
        so a gateway that refuses or caps this client sees DIAL_AT_ONCE attempts
        at most, not ``count``.
        """
        errors: list[Exception] = []
        left = count

        async def dialler() -> None:
            nonlocal left
            while left > 0 and not errors:
                left -= 1
                try:
                    await self._dial()
                except (OSError, ProtocolError, AccessDenied, TimeoutError) as exc:
                    self.dial_failures += 1
                    errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(min(count, DIAL_AT_ONCE)):
                tg.start_soon(dialler)
        return errors

    async def _dial(self) -> None:
        self._count += 1
        loop = asyncio.get_running_loop()
        link = TunnelLink(self, self._count)
        ready = link.ready
        assert ready is not None
        trust = self.trust
        tls: dict[str, Any] = {}
        if trust is not None:
            tls = {
                "ssl": trust.context,
                "server_hostname": trust.server_hostname,
                "ssl_handshake_timeout": self.settings.dial_timeout,
            }
        try:
            with anyio.fail_after(self.settings.dial_timeout):
                await loop.create_connection(lambda: link, self.dial.host, self.dial.port, **tls)
                self.links.add(link)
                await ready
        except ssl.SSLError as exc:
            self.links.discard(link)
            link.close()
            raise TlsFailed(describe_tls_error(exc)) from exc
        except TimeoutError as exc:
            self.links.discard(link)
            link.close()
            if trust is None and link.transport is not None and link.silent:
                raise ProtocolError(
                    f"the gateway sent no CHALLENGE in {self.settings.dial_timeout:g} s"
                    " (if its tunnel port speaks TLS, pass --tls, --ca or --fingerprint)"
                ) from exc
            raise
        except BaseException:
            self.links.discard(link)
            link.close()
            raise
        log.debug("[%s] ready at %s", link.name, self.label)


class _BusyNotice:
    """Says once that the gateway turns connections away (BUSY), then rarely: no flood.

    BUSY for a per-client or per-tunnel limit lasts as long as the limit or the
    pool does not change, and the client retries it with backoff for ever; a
    line per retry would say nothing new. A different answer (other than in its
    numbers) is said at once.
    """

    def __init__(self) -> None:
        self.reason = ""  # the last answer said, numbers left out
        self.said_at = 0.0
        self.unsaid = 0  # refused attempts since the last line

    def refused(self, keeper: Keeper, error: Exception, attempts: int, delay: float) -> None:
        reason = re.sub(r"[0-9]+", "N", str(error))
        now = time.monotonic()
        self.unsaid += attempts
        held = f"holding the pool at {len(keeper.links)} of {keeper.settings.pool} connections"
        if reason != self.reason:
            log.warning(
                "gateway %s: %s; %s, retrying in %.1f s, then up to every %g s"
                " (said again at most every %g s while it lasts)",
                keeper.label,
                error,
                held,
                delay,
                keeper.settings.max_backoff,
                BUSY_REPEAT,
            )
        elif now - self.said_at >= BUSY_REPEAT:
            log.warning(
                "gateway %s: still busy, %d attempts refused since it was last said: %s; %s",
                keeper.label,
                self.unsaid,
                error,
                held,
            )
        else:
            log.debug("gateway %s: %s; retrying in %.1f s", keeper.label, error, delay)
            return
        self.reason, self.said_at, self.unsaid = reason, now, 0


def _describe(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def resolve_gateways(gateways: tuple[str, ...]) -> list[tuple[Address, str | None]]:
    """Each ``--gateway``, and the addresses to dial it at: one pool per gateway.

    A name that resolves to several addresses (a headless Kubernetes Service,
    round-robin DNS) is several gateways: each gets its own pool, dialled by
    address but verified (TLS) by name. A name with one address, or none yet, is
    dialled by name, so every re-dial resolves it afresh. The set of addresses is
    fixed when the client starts: a gateway added later is not dialled until restart.
    """
    loop = asyncio.get_running_loop()
    resolved: list[tuple[Address, str | None]] = []
    for text in gateways:
        gateway = parse_address(text)
        try:
            infos = await loop.getaddrinfo(gateway.host, gateway.port, type=socket.SOCK_STREAM)
        except OSError:
            infos = []  # not resolvable yet: the keeper retries and says why
        by_family: dict[int, list[str]] = {}
        for family, *_, sockaddr in infos:
            hosts = by_family.setdefault(family, [])
            if str(sockaddr[0]) not in hosts:
                hosts.append(str(sockaddr[0]))
        # one IPv4 and one IPv6 address (``localhost``) are one host, not two gateways
        hosts = max(by_family.values(), key=len, default=[])
        if len(hosts) > 1:
            resolved.extend((gateway, host) for host in hosts)
        else:
            resolved.append((gateway, None))
    return resolved


class Client:
    """Serve one tunnel from behind NAT: an async context manager.

    ``async with Client(gateway="gw.example.com:9001", target="127.0.0.1:8080",
    token=...)`` starts filling the pool on enter and closes every connection
    on exit. If the gateway denies the token, the body is cancelled and
    AccessDenied is raised from the ``async with``.
    """

    def __init__(self, settings: ClientSettings | None = None, /, **overrides: Any) -> None:
        self.settings = replace(settings, **overrides) if settings else ClientSettings(**overrides)
        self._stack: AsyncExitStack | None = None
        self.keepers: list[Keeper] = []  # one per gateway address
        self.admin: AdminServer | None = None
        self._idle_event = anyio.Event()

    async def __aenter__(self) -> Client:
        stack = AsyncExitStack()
        self.admin = await start_admin(client_routes(self), self.settings.admin, "client")
        if self.admin is not None:
            stack.push_async_callback(self.admin.aclose)
        task_group = await stack.enter_async_context(anyio.create_task_group())
        self.keepers = [
            Keeper(self.settings, gateway, task_group, dial_host)
            for gateway, dial_host in await resolve_gateways(self.settings.gateway)
        ]
        for keeper in self.keepers:
            keeper.on_idle_change = self._idle_changed
            task_group.start_soon(keeper.run)
        stack.callback(self._close_links)
        stack.callback(task_group.cancel_scope.cancel)
        self._stack = stack
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

    def _close_links(self) -> None:
        """Close every connection, idle or paired: a stopped client serves nothing."""
        for keeper in self.keepers:
            for link in list(keeper.links):
                link.close()
            for splice in list(keeper.splices):
                splice.close()
            for drain in list(keeper.draining):
                drain.transport.close()

    @property
    def tcp_port(self) -> int:
        """A TCP tunnel's public port, as the (first) gateway assigned it; 0 until known."""
        return next((k.tcp_port for k in self.keepers if k.tcp_port), 0)

    @property
    def idle_count(self) -> int:
        """Connections now idle at the gateway, ready for a request."""
        return sum(keeper.idle_count for keeper in self.keepers)

    def _idle_changed(self) -> None:
        self._idle_event.set()
        self._idle_event = anyio.Event()

    async def wait_ready(self, count: int | None = None) -> None:
        """Wait until ``count`` connections in all are idle (default: every gateway's pool)."""
        pool = self.settings.pool
        while (
            self.idle_count < count
            if count is not None
            else any(keeper.idle_count < pool for keeper in self.keepers)
        ):
            await self._idle_event.wait()

    async def drain(self, grace: float | None = None) -> None:
        """Stop new pairings, let in-flight splices finish for up to ``grace`` s, cut the rest.

        The idle connections close (so the gateway stops handing them out) and
        none is re-dialled. Returns at once when nothing is in flight.
        """
        grace = self.settings.grace if grace is None else grace
        busy = sum(keeper.in_flight for keeper in self.keepers)
        log.info("draining: no new pairings; %d in flight, grace %g s", busy, grace)
        with anyio.move_on_after(grace):
            for keeper in self.keepers:
                await keeper.drain()
        left = sum(keeper.in_flight for keeper in self.keepers)
        if left:
            log.warning("grace of %g s over: cutting %d connection(s) still in flight", grace, left)
        self._close_links()

    async def run(self) -> None:
        """Serve until cancelled (the CLI's way); raises AccessDenied on denial."""
        async with self:
            await anyio.sleep_forever()
