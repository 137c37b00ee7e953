"""The raw splice: two transports joined so bytes flow both ways untouched.

Why protocol callbacks and not anyio streams? On this hot path every chunk
through ``await receive()`` / ``await send()`` costs several task switches,
which measured 2.5-3x slower than handing bytes from one transport's
``data_received`` straight to the other's ``write`` (see DESIGN.md, "The data
path"). Flow control is the transports' own: when one side's write buffer
passes its high-water mark, asyncio calls ``pause_writing`` on that side's
protocol, and we stop reading from the other side until ``resume_writing``.

End of stream is passed on as a half-close (``write_eof``), so protocols
that read to EOF work; once both directions have ended, both transports are
closed at once (uvloop aborts on transports left open after EOF both ways).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast


class SpliceEnd(asyncio.Protocol):
    """One side of a splice; what it reads, its ``peer`` writes."""

    def __init__(self, splice: Splice) -> None:
        self.splice = splice
        self.transport: asyncio.Transport | None = None
        self.peer: SpliceEnd
        self.eof = False
        self.bytes_in = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        peer = self.peer.transport
        if peer is not None and not peer.is_closing():
            peer.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.splice._eof(self)
        # Keep our write side open: the other direction may go on. A TLS transport
        # cannot half-close, and asyncio warns if told to try.
        return self.transport is not None and self.transport.can_write_eof()

    def pause_writing(self) -> None:
        peer = self.peer.transport
        if peer is not None and not peer.is_closing():
            peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer.transport
        if peer is not None and not peer.is_closing():
            peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice._lost(self)


class Splice:
    """Join two transports. ``on_closed`` runs once, when both sides are closed."""

    def __init__(self, on_closed: Callable[[Splice], None] | None = None) -> None:
        self.a = SpliceEnd(self)
        self.b = SpliceEnd(self)
        self.a.peer, self.b.peer = self.b, self.a
        self._on_closed = on_closed
        self._lost_count = 0

    @staticmethod
    def adopt(end: SpliceEnd, transport: asyncio.Transport, pending: bytes = b"") -> None:
        """Make ``end`` the protocol of an already open transport.

        ``pending`` are bytes read from it before the splice existed; they go
        to the peer first, so nothing is lost in the hand-over.
        """
        transport.set_protocol(end)
        end.connection_made(transport)
        if pending:
            end.data_received(pending)

    def close(self) -> None:
        for end in (self.a, self.b):
            if end.transport is not None and not end.transport.is_closing():
                end.transport.close()

    def _eof(self, end: SpliceEnd) -> None:
        peer = end.peer.transport
        if end.peer.eof or peer is None:
            self.close()
        elif not peer.is_closing():
            if peer.can_write_eof():
                peer.write_eof()
            else:
                self.close()

    def _lost(self, end: SpliceEnd) -> None:
        self._lost_count += 1
        other = end.peer.transport
        if other is not None and not other.is_closing():
            other.close()
        if self._lost_count == 2 and self._on_closed is not None:
            self._on_closed(self)
