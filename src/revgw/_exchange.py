"""One request and its response, between a caller and a tunnel connection.

The request head is rewritten (hop-by-hop headers out, X-Forwarded-* in);
its body and the whole response pass through as bytes. The sans-IO
ResponseReader only watches the response go by, so the exchange knows when
it ends, whether the tunnel connection can stay warm, and, while no byte has
reached the caller yet, whether to answer 502/504 instead.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import TYPE_CHECKING

from ._clock import NEVER
from ._errors import BadUpstreamResponse, BodyTooLarge, HTTPError, UpstreamTimeout
from ._http import LAST_CHUNK, RequestHead, ResponseState, encode_chunk

if TYPE_CHECKING:
    from ._caller import CallerConnection
    from ._tunnel_conn import TunnelConnection

log = logging.getLogger("revgw.gateway")

# Methods that change nothing when repeated (RFC 9110 9.2.2): safe to retry
# on another connection if the first one died before answering.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class ExchangeState(enum.Enum):
    SENDING = "sending"  # request head and maybe body going out
    AWAITING = "awaiting"  # request sent, waiting for the response head
    RECEIVING = "receiving"  # final response flowing back (the request body may still be, too)
    DONE = "done"


class Exchange:
    __slots__ = (
        "_caller_paused",
        "_heard_back",
        "_request_done",
        "_tunnel_paused",
        "attempt",
        "body_bytes",
        "caller",
        "conn",
        "deadline",
        "head",
        "paired",
        "response",
        "started",
        "state",
    )

    def __init__(
        self,
        caller: CallerConnection,
        conn: TunnelConnection,
        head: RequestHead,
        attempt: int,
        started: float,
    ) -> None:
        self.caller = caller
        self.conn = conn
        self.head = head
        self.attempt = attempt
        self.state = ExchangeState.SENDING
        # A caller that asked to close must read so in the answer (the server
        # was asked to keep the tunnel connection alive, and will say so).
        self.response = conn.response_reader()
        self.response.expect(head.method, not head.keep_alive)
        self.started = started  # when the request head was read
        self.paired = time.monotonic()
        self.deadline = NEVER  # while AWAITING: when the server is too slow
        self._heard_back = False  # any byte at all from the tunnel connection
        # The response may begin before the request ends (a 100 Continue, an
        # echo streaming back, an early error), so the request side keeps its
        # own flag: the body must keep flowing while the response does.
        self._request_done = False
        self._tunnel_paused = False
        self._caller_paused = False
        self.body_bytes = 0  # request body passed on so far (--max-body-bytes)

    def start(self, rendered_head: bytes) -> None:
        self.conn.pair(self, rendered_head)

    @property
    def caller_address(self) -> str:
        """Who called (``address:port``), for the START line of a fresh connection."""
        return self.caller.peer

    # --- request side, driven by the caller connection -------------------------------

    def send_body(self, data: bytes) -> None:
        if self._request_done or self.state is ExchangeState.DONE:
            return
        self.body_bytes += len(data)
        limit = self.caller.gateway.settings.max_body_bytes
        if self.body_bytes > limit:
            # Only a chunked body gets here (a Content-Length over the limit is
            # refused before pairing). The server has a truncated body: the
            # tunnel connection is closed, never reused (``_fail``).
            self._fail(
                BodyTooLarge(
                    f"the chunked request body grew past this gateway's limit of {limit} bytes"
                    " (--max-body-bytes)"
                )
            )
            return
        self.conn.write(encode_chunk(data) if self.head.chunked else data)

    def end_request(self) -> None:
        if self._request_done or self.state is ExchangeState.DONE:
            return
        self._request_done = True
        if self.head.chunked:
            self.conn.write(LAST_CHUNK)
        if self.state is not ExchangeState.SENDING:
            return  # the final response is already under way: no wait to time
        self.state = ExchangeState.AWAITING
        self.deadline = time.monotonic() + self.caller.gateway.settings.upstream_timeout

    def send_raw(self, data: bytes) -> None:
        """Bytes after an upgrade request: the server may read them once it switches."""
        self.conn.write(data)

    # --- response side, driven by the tunnel connection ------------------------------

    def upstream_data(self, data: bytes) -> None:
        if self.state is ExchangeState.DONE:
            return
        self._heard_back = True
        try:
            out = self.response.feed(data)
        except BadUpstreamResponse as exc:
            self._fail(exc)
            return
        state = self.response.state
        if out:
            last = state is ResponseState.DONE and not self._caller_continues()
            self.caller.write(out, last)  # ``last``: the caller's connection closes next
        if state is ResponseState.HEAD:
            return  # nothing yet, or a 1xx: still waiting for the final head
        self.state = ExchangeState.RECEIVING  # the deadline only holds while AWAITING
        if state is ResponseState.DONE:
            self._finish()
        elif state is ResponseState.UPGRADED:
            self._finish(upgraded=True)

    def upstream_eof(self) -> None:
        if self.state is ExchangeState.DONE:
            return
        try:
            self.response.feed_eof()
        except BadUpstreamResponse as exc:
            self._fail(exc, died=not self._heard_back)
            return
        self._finish()

    def upstream_lost(self) -> None:
        if self.state is not ExchangeState.DONE:
            self._fail(
                BadUpstreamResponse(
                    "the tunnel connection closed before the private server's response ended"
                ),
                died=not self._heard_back,
            )

    # Backpressure: while one side cannot take more, stop reading the other.
    # Whatever the exchange pauses it also resumes when it ends (``_end``): a
    # connection must not turn warm, or a caller wait for its next request,
    # with reading still paused.

    def upstream_paused(self, paused: bool) -> None:
        self._caller_paused = paused
        self.caller.pause_reading("upstream", paused)

    def caller_paused(self, paused: bool) -> None:
        self._tunnel_paused = paused
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def caller_lost(self) -> None:
        """The caller went away mid-exchange: the tunnel connection cannot be reused."""
        if self.state is not ExchangeState.DONE:
            self._end()
            self.conn.close()

    # --- endings --------------------------------------------------------------------

    def check_deadline(self, now: float) -> None:
        """Called by the gateway's clock: answer 504 if the server is too slow."""
        if self.state is ExchangeState.AWAITING and now >= self.deadline:
            timeout = self.caller.gateway.settings.upstream_timeout
            self._fail(
                UpstreamTimeout(
                    f"the private server behind tunnel '{self.caller_tunnel}' did not answer "
                    f"within {timeout:g} s"
                )
            )

    @property
    def caller_tunnel(self) -> str:
        tunnel = self.conn.tunnel
        return tunnel.name if tunnel is not None else "?"

    def _end(self) -> None:
        self.state = ExchangeState.DONE
        if self._tunnel_paused:
            self.caller_paused(False)
        if self._caller_paused:
            self.upstream_paused(False)

    def _finish(self, upgraded: bool = False) -> None:
        request_done = self._request_done
        self._end()
        if upgraded:
            self.caller.exchange_upgraded(self)
            return
        head, response = self.head, self.response
        self.conn.release(response.reusable and request_done and head.version == "1.1")
        self.caller.exchange_done(self, self._caller_continues())

    def _caller_continues(self) -> bool:
        """Whether the caller's connection stays open for its next request.

        Even when the response ended before the request did (a server may
        answer an upload early, with a 401 or a 413): that answer did not say
        ``Connection: close``, so the caller may send its next request. The
        rest of the body is read and dropped (``CallerConnection._pump``).
        """
        head, response = self.head, self.response
        return (
            head.keep_alive
            and response.keep_alive
            and not head.upgrade
            and response.caller_may_continue
        )

    def _fail(self, error: HTTPError, died: bool = False) -> None:
        """Before any byte reached the caller: retry or answer; after: cut the caller off.

        ``died``: the tunnel connection ended without a single byte back. Only
        then is a retry safe; a garbage answer or a timeout is the server's own
        doing, and resending would repeat it.
        """
        # A 1xx may have gone out; until the final head has, we can still answer.
        nothing_sent = self.response.state is ResponseState.HEAD
        self._end()
        self.conn.close()
        if nothing_sent and died and self._retryable():
            log.info(
                "[%s] tunnel connection failed before answering (%s); retrying once",
                self.conn.name,
                error,
            )
            self.caller.exchange_retry(self)
        elif nothing_sent:
            self.caller.exchange_failed(self, error)
        else:
            log.warning("[%s] response cut short: %s", self.conn.name, error)
            self.caller.abort()

    def _retryable(self) -> bool:
        return self.attempt == 1 and self.head.method in IDEMPOTENT and not self.head.has_body
