"""One caller's connection to the gateway's public port.

Requests on it are served one at a time, in order (pipelined ones wait in
the queue). For each: route by Host, take a tunnel connection, and let an
Exchange carry the request and response. The common case runs entirely in
protocol callbacks; only when the pool is empty does a task wait, in line,
for a connection (``Tunnel.acquire``).

::

    READING --head, a connection free--> FORWARDING --response ends--> READING
       \\--head, none free--> WAITING --/                  \\--(or)--> CLOSING
    FORWARDING --101--> UPGRADED (a raw splice owns both transports)
    any --error answered, timeout, EOF--> CLOSING --> CLOSED
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import anyio

from ._address import peer_of
from ._clock import NEVER
from ._errors import BodyTooLarge, Forbidden, HTTPError, Unauthorized
from ._exchange import Exchange
from ._http import (
    Body,
    EndOfMessage,
    RequestEvent,
    RequestHead,
    RequestReader,
    Upgraded,
    error_response,
    render_request_head,
)
from ._public_port import set_on_listeners
from ._splice import Splice

if TYPE_CHECKING:
    from ._gateway import Gateway
    from ._pool import Tunnel
    from ._tunnel_conn import TunnelConnection

log = logging.getLogger("revgw.gateway")
access_log = logging.getLogger("revgw.access")

MAX_QUEUED_BYTES = 256 * 1024
LINGER = 2.0
# Linux only: a corked socket's partial segments wait for the uncork or the
# FIN (or 200 ms). Callers' sockets start corked: see ``cork_listeners``.
TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)


def cork_listeners(listeners: Sequence[socket.socket]) -> bool:
    """Cork a plain public port's listening sockets (all or none); False if not done.

    What they accept inherits the cork, for free. A caller that asked to close
    then gets its answer and the FIN in one segment when the connection closes
    (one delivery and one wake-up fewer on each side, a fifth of the gateway's
    CPU per fresh connection in ``make bench``); a kept connection is uncorked
    before its first answer (``CallerConnection.write``). Never for TLS: its
    handshake is written before any protocol of ours could uncork.
    """
    return set_on_listeners(listeners, TCP_CORK, 1)


def uncork(transport: asyncio.BaseTransport) -> None:
    """Let a corked socket send what it holds, and hold nothing more."""
    sock = transport.get_extra_info("socket")
    if sock is not None and TCP_CORK is not None:
        with contextlib.suppress(OSError):  # a reset socket: nothing to send anyway
            sock.setsockopt(socket.IPPROTO_TCP, TCP_CORK, 0)


class CallerState(enum.Enum):
    READING = "reading"
    WAITING = "waiting"
    FORWARDING = "forwarding"
    UPGRADED = "upgraded"
    CLOSING = "closing"
    CLOSED = "closed"


def _pass_on(exchange: Exchange, event: RequestEvent | HTTPError) -> bool:
    """Give a body event to the current request's exchange; False for anything else."""
    if isinstance(event, EndOfMessage):
        exchange.end_request()
    elif isinstance(event, Body):
        exchange.send_body(event.data)
    elif isinstance(event, Upgraded):
        exchange.send_raw(event.data)
    else:
        return False  # a request head or an error: not this exchange's
    return True


class CallerConnection(asyncio.Protocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.state = CallerState.READING
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self._reader = RequestReader(gateway.settings.max_header_bytes)
        self._queue: deque[RequestEvent | HTTPError] = deque()
        self._queued_bytes = 0
        self._paused: set[str] = set()
        self.deadline = NEVER  # when the current state has lasted too long
        self._wait_scope: anyio.CancelScope | None = None
        self._caller_eof = False
        self._had_request = False
        self._pumping = False
        self._peername: object = None  # what the socket says; ``peer`` formats it when asked
        self._peer: str | None = None
        self._caller_ip = ""
        self._trusted = False
        self._tunnel_name = ""  # the current request's tunnel, for the metrics
        self._head: RequestHead | None = None  # the latest request's
        self._log_requests = access_log.isEnabledFor(logging.INFO)  # set once, at start-up
        self._corked = gateway.callers_corked  # until the first answer that is not the last

    @property
    def peer(self) -> str:
        """The caller's ``address:port``, for logs and the START line."""
        if self._peer is None:
            self._peer = peer_of(self._peername)
        return self._peer

    def _moved_on(self) -> None:
        """Tell a draining gateway that this caller arrived, sent its first request or ended.

        Checked here first: the gateway is not compiled, and a call into it
        costs more than the check, three times per fresh connection.
        """
        if self.gateway.draining:
            self.gateway.caller_moved_on()

    # --- the one place the state changes --------------------------------------------

    def _move(self, state: CallerState, timeout: float | None = None) -> None:
        self.state = state
        self.deadline = NEVER if timeout is None else time.monotonic() + timeout

    def check_deadlines(self, now: float) -> None:
        """Called by the gateway's clock: this connection's and its exchange's."""
        if self.exchange is not None:
            self.exchange.check_deadline(now)
        if now >= self.deadline:
            self.deadline = NEVER
            self._timed_out()

    def _timed_out(self) -> None:
        if self.state is CallerState.READING:
            log.info("caller %s sent no complete request in time; closing", self.peer)
            self._close_now()
        elif self.state is CallerState.CLOSING:
            self._close_now()

    # --- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        peername = self._peername = transport.get_extra_info("peername")
        # Who the caller is does not change between its requests: work it out once.
        self._caller_ip = str(peername[0]) if isinstance(peername, tuple) else ""
        self._trusted = self._caller_ip in self.gateway.trusted_proxies
        refusal = self.gateway.caller_refused()
        self.gateway.callers.add(self)
        self._moved_on()
        if refusal is not None:
            # Answer before reading anything, then linger (as after any final
            # answer) so the caller's unread request cannot reset the 503 away.
            self.write(error_response(refusal, keep_alive=False), last=True)
            self._close_lingering(linger=True)
            return
        self._move(CallerState.READING, self.gateway.settings.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.state is CallerState.CLOSING:
            return  # lingering after a final answer: the rest is discarded
        try:
            events: Sequence[RequestEvent | HTTPError] = self._reader.feed(data)
        except HTTPError as exc:
            events = [*self._reader.parsed_before_error, exc]
        if self.exchange is not None and not self._queue:
            self._forward(events)
        else:
            self._queue.extend(events)
            self._queued_bytes += len(data)
            self._pump()
        if self._queued_bytes > MAX_QUEUED_BYTES:
            self.pause_reading("queue", True)

    def eof_received(self) -> bool:
        self._caller_eof = True
        if self.state is CallerState.CLOSING or (
            self.state is CallerState.READING and not self._queue
        ):
            self._close_now()  # nothing left to answer or to drain
            return False
        # The answer in progress can still be written (a TLS transport cannot
        # half-close, and asyncio warns if told to try).
        return self.transport is not None and self.transport.can_write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._move(CallerState.CLOSED)
        self._reader.close()
        self.gateway.callers.discard(self)
        self._moved_on()
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.caller_lost()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.caller_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.caller_paused(False)

    # --- the request queue ----------------------------------------------------------------

    def _forward(self, events: Sequence[RequestEvent | HTTPError]) -> None:
        """Hand the current request's body events to its exchange; queue the rest."""
        exchange = self.exchange
        assert exchange is not None
        for index, event in enumerate(events):
            if not _pass_on(exchange, event):
                # The next request's head (pipelining) or an error: after this one.
                self._queue.extend(events[index:])
                self.pause_reading("pipeline", True)
                return

    def _pump(self) -> None:
        """Serve queued events as far as the current state allows.

        Re-entry (an answer finishing inside the loop) just lets the running
        loop continue, so a flood of pipelined requests cannot recurse.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            self._pump_queue()
        finally:
            self._pumping = False

    def _pump_queue(self) -> None:
        queue = self._queue
        while queue:
            exchange = self.exchange
            if exchange is not None:
                if not _pass_on(exchange, queue[0]):
                    self.pause_reading("pipeline", True)  # the next request: after this one
                    return
                queue.popleft()
                continue
            if self.state is not CallerState.READING:
                return
            event = queue.popleft()
            if isinstance(event, HTTPError):
                log.warning("caller %s: %d %s", self.peer, event.status, event)
                self._answer(event, None)
            elif isinstance(event, RequestHead):
                self._dispatch(event, attempt=1)
            # a stray Body/End here belongs to a request already answered: skip it
        self._queued_bytes = 0
        if self._paused:
            self.pause_reading("queue", False)

    def pause_reading(self, reason: str, paused: bool) -> None:
        """Reading stops while any reason holds: backpressure, pipelining, queue size."""
        if not paused and not self._paused:
            return  # the common case, once per request: nothing to resume
        before = bool(self._paused)
        if paused:
            self._paused.add(reason)
        else:
            self._paused.discard(reason)
        transport = self.transport
        if transport is None or transport.is_closing() or before == bool(self._paused):
            return
        if self._paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    # --- one request -----------------------------------------------------------------------

    def _dispatch(self, head: RequestHead, attempt: int) -> None:
        started = time.monotonic()
        self._tunnel_name = ""
        self._head = head
        if not self._had_request:
            self._had_request = True
            self._moved_on()
        try:
            tunnel = self.gateway.registry.route(head.host)
            self._tunnel_name = tunnel.name
            if not tunnel.access.empty:
                self._check_access(tunnel, head)
            limit = self.gateway.settings.max_body_bytes
            if head.content_length is not None and head.content_length > limit:
                raise BodyTooLarge(
                    f"the request body ({head.content_length} bytes) is over this gateway's "
                    f"limit of {limit} bytes (--max-body-bytes)"
                )
        except HTTPError as exc:
            self._answer(exc, head, started)
            return
        conn = tunnel.take()
        if conn is not None:
            self._begin(head, conn, attempt, started)
        elif not tunnel.online:
            self._answer(tunnel.offline_error(), head, started)
        else:
            self._move(CallerState.WAITING)
            self.gateway.task_group.start_soon(
                self._wait_for_connection, head, tunnel, attempt, started
            )

    def _check_access(self, tunnel: Tunnel[TunnelConnection], head: RequestHead) -> None:
        """Raise Forbidden or Unauthorized if the tunnel's rules keep this caller out.

        Checked before pairing, so a refused caller never reaches the client.
        The address is this connection's peer (a proxy in front of the gateway
        is what is checked, whatever X-Forwarded-For says). ``Authorization``
        is forwarded as it came: the private server may use it too.
        """
        access = tunnel.access
        address = self._caller_ip
        if not access.address_allowed(address):
            raise Forbidden(f"tunnel '{tunnel.name}' does not accept callers from {address}")
        values = [value for name, value in head.headers if name.lower() == b"authorization"]
        if not access.authorized(values[0] if len(values) == 1 else None):
            raise Unauthorized(
                f"tunnel '{tunnel.name}' needs a user name and password (HTTP Basic auth)",
                realm=f"revgw tunnel {tunnel.name}",
            )

    async def _wait_for_connection(
        self, head: RequestHead, tunnel: Tunnel[TunnelConnection], attempt: int, started: float
    ) -> None:
        """The slow path: wait in line for a connection (its wait counts in the latency)."""
        with anyio.CancelScope() as scope:
            self._wait_scope = scope
            try:
                while True:
                    conn = await tunnel.acquire(self.gateway.settings.pool_wait)
                    if conn.usable:  # it may have closed between hand-over and now
                        break
            except HTTPError as exc:
                self._wait_scope = None
                self._answer(exc, head, started)
                return
            self._wait_scope = None
            if scope.cancel_called:
                # The caller left in the very loop iteration its connection was
                # handed over: the cancel could not interrupt a finished wait.
                # Nobody awaits this request, so it must not reach the private
                # server; the connection serves the next one in line instead.
                tunnel.offer(conn)
                return
            self._begin(head, conn, attempt, started)
            return
        # Cancelled: the caller left while waiting (or the gateway is stopping).

    def _begin(
        self, head: RequestHead, conn: TunnelConnection, attempt: int, started: float
    ) -> None:
        self._move(CallerState.FORWARDING)
        gateway = self.gateway
        exchange = self.exchange = Exchange(self, conn, head, attempt, started)
        if gateway.draining:
            exchange.response.close_caller()
        exchange.start(
            render_request_head(head, self._caller_ip, gateway.public_scheme, self._trusted)
        )
        if self._queue and not self._pumping:
            self._pump()  # the body that came with the head

    # --- called by the exchange --------------------------------------------------------------

    def write(self, data: bytes, last: bool = False) -> None:
        """``last``: the connection is closed (or half-closed) right after this write.

        A corked socket (``cork_listeners``) keeps it corked for the last
        write, so the close sends it with the FIN; any other write uncorks
        first, once, or it would wait for the kernel's 200 ms timer.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._corked and not last:
            self._corked = False
            uncork(transport)
        transport.write(data)

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        self.exchange = None
        self._log_access(exchange.head, exchange.response.status, exchange.started, exchange)
        self._next_or_close(keep_alive)

    def exchange_failed(self, exchange: Exchange, error: HTTPError) -> None:
        self.exchange = None
        log.warning("[%s] %d for %s: %s", exchange.conn.name, error.status, self.peer, error)
        self._answer(error, exchange.head, exchange.started, exchange)

    def exchange_retry(self, exchange: Exchange) -> None:
        self.exchange = None
        self._move(CallerState.READING)
        self._dispatch(exchange.head, attempt=exchange.attempt + 1)

    def exchange_upgraded(self, exchange: Exchange) -> None:
        """101: from now on a raw splice owns both transports."""
        assert self.transport is not None
        self.exchange = None
        self._log_access(exchange.head, 101, exchange.started, exchange)
        self._move(CallerState.UPGRADED)
        self.gateway.callers.discard(self)
        pending = b"".join(e.data for e in self._queue if isinstance(e, Upgraded))
        self._queue.clear()
        conn = exchange.conn
        gateway = self.gateway

        def closed(splice: Splice) -> None:
            gateway.splices.discard(splice)
            conn.splice_closed()
            gateway.caller_moved_on()

        splice = Splice(on_closed=closed)
        gateway.splices.add(splice)
        tunnel_transport = conn.detach()
        Splice.adopt(splice.b, tunnel_transport)
        Splice.adopt(splice.a, self.transport)
        if pending:
            tunnel_transport.write(pending)
        for transport in (self.transport, tunnel_transport):
            transport.resume_reading()
        if self._caller_eof:  # read before the 101: the server must still learn of it
            splice.a.eof_received()

    @property
    def heard_all(self) -> bool:
        """Nothing more to read: a whole request is in, and it asked to close after its answer.

        The public port then need not watch the socket (``CallerSocket``).
        """
        head = self._head
        return (
            head is not None
            and not head.keep_alive
            and not head.upgrade
            and self._reader.between_messages
            and (not self._queue or all(isinstance(e, (Body, EndOfMessage)) for e in self._queue))
        )

    @property
    def awaiting_first_request(self) -> bool:
        """Connected, but no request yet: a drain must still answer the one to come."""
        return not self._had_request and self.state is CallerState.READING

    def drain(self) -> None:
        """The gateway is stopping: close if between requests, else after this answer.

        A connection that has not sent its first request is not between
        requests: a load balancer connects, then sends, and would see that
        request fail. It is answered (``Connection: close``) when it comes.
        """
        if self.exchange is not None:
            self.exchange.response.close_caller()
        elif (
            self.state is CallerState.READING
            and self._had_request
            and not self._queue
            and self._reader.between_messages
        ):
            self._close_now()

    def abort(self) -> None:
        """A response was cut short: the caller must see a broken connection, not an end."""
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()

    # --- answers and endings -------------------------------------------------------------------

    def _answer(
        self,
        error: HTTPError,
        head: RequestHead | None,
        started: float | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        """Answer with the gateway's own error response, keeping the connection if we can.

        A request's unread body need not stop keep-alive: its events reach
        ``_pump`` with no exchange and are dropped there. A malformed request
        (``head`` is None) leaves the parser unusable, so that closes.
        """
        keep_alive = (
            head is not None and head.keep_alive and not head.upgrade and not self.gateway.draining
        )
        if isinstance(error, BodyTooLarge):
            keep_alive = False  # reading the rest of a body that large is what we refuse
        if isinstance(error, BodyTooLarge) and exchange is None:  # else exchange_failed logged
            log.warning("caller %s: %d %s", self.peer, error.status, error)
        self.write(error_response(error, keep_alive), last=not keep_alive)
        if head is not None:
            self._log_access(head, error.status, started, exchange)
        self._next_or_close(keep_alive)

    def _next_or_close(self, keep_alive: bool) -> None:
        if keep_alive and not self._caller_eof and not self.gateway.draining:
            self._move(CallerState.READING, self.gateway.settings.idle_timeout)
            if self._paused:
                self.pause_reading("pipeline", False)
            if self._queue:
                self._pump()  # a pipelined request is next
            return
        self._close_lingering()

    def _close_lingering(self, linger: bool = False) -> None:
        """Close after the answer is written, reading and dropping what the caller still sends.

        Closing with unread bytes would make the kernel reset the connection,
        which can destroy the answer before the caller reads it. When the
        caller's last request was read to its end and nothing else came, no
        byte can be unread: close at once (the common case, and the cheap one).
        ``linger`` forces the lingering close (an answer sent before reading).
        """
        nothing_pending = not linger and not self._queue and self._reader.between_messages
        self._queue.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._paused.clear()
        if nothing_pending or self._caller_eof or not transport.can_write_eof():
            self._move(CallerState.CLOSING)  # closed now: the loop reports it lost next
            transport.close()
            return
        self._move(CallerState.CLOSING, LINGER)
        transport.write_eof()
        transport.resume_reading()

    def _close_now(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _log_access(
        self,
        head: RequestHead,
        status: int,
        started: float | None,
        exchange: Exchange | None,
    ) -> None:
        """Every request ends here: count it for the admin listener, then log it."""
        if exchange is not None and started is not None:
            now = time.monotonic()
            self.gateway.stats.carried(
                self._tunnel_name,
                status,
                wait=exchange.paired - started,
                upstream=now - exchange.paired,
                bytes_in=exchange.body_bytes,
                bytes_out=exchange.response.sent_bytes,
            )
        else:
            self.gateway.stats.answered(self._tunnel_name, status)
        if not self._log_requests:
            return
        elapsed = (time.monotonic() - started) * 1000 if started is not None else 0.0
        via = f"[{exchange.conn.name}] " if exchange is not None else ""
        size = exchange.response.sent_bytes if exchange is not None else 0
        access_log.info(
            '%s%s "%s %s HTTP/%s" %d %dB %.1fms',
            via,
            self.peer,
            head.method.decode("latin-1"),
            head.target.decode("latin-1")[:200],
            head.version,
            status,
            size,
            elapsed,
            extra={  # fields of their own in --log-format json
                "tunnel": exchange.conn.name.partition("#")[0] if exchange is not None else "",
                "status": status,
                "bytes": size,
                "latency_ms": round(elapsed, 1),
            },
        )
