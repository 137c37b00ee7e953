"""The plain public port: callers accepted, read and answered without a loop transport.

Most callers that open a connection send one whole request at once and ask
to close after the answer (``Connection: close``, or HTTP/1.0). The gateway
then needs one read, one write and a close. An event-loop transport adds
its own bookkeeping and five system calls to each such connection
(registering the socket with epoll and removing it again, getsockname,
getpeername, TCP_NODELAY): about a sixth of the gateway's CPU per fresh
connection in ``make bench``.

So this port accepts in a loop of its own, reads what came with the
connection at once, and gives the ``CallerConnection`` a ``CallerSocket``: a
transport that writes straight to the socket. The moment the connection
needs more (another read, a write the kernel cannot take whole, a
half-close), the ``CallerSocket`` hands the socket to the event loop
(``loop.connect_accepted_socket``) and passes everything on from then on:
keep-alive callers, uploads, WebSockets and slow readers get the loop's
transport, with its flow control, as before.

A caller accepted before its request came is watched for its first bytes
in an epoll set of the port's own (``FirstBytes``), not by a transport.

One difference while a socket is ours alone: it is not watched, so a caller
that hangs up while its request is with the private server is noticed when
the answer is written, not at once. The answer is then dropped and the
tunnel connection stays warm. The HTTPS port always uses the loop's
transports: its TLS needs them from the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import select
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from ._caller import CallerConnection

log = logging.getLogger("revgw.gateway")

READ_SIZE = 64 * 1024  # what the loop's transports read at most, too
HIGH_WATER = 64 * 1024  # asyncio's default: stop the other side above this, while promoting
ACCEPT_BATCH = 256  # accepts per wake-up, so one busy port cannot starve the loop
ACCEPT_RETRY = 1.0  # out of file descriptors: accept again after this (asyncio's delay too)
# Linux: the kernel keeps a new connection until its first bytes come (at most
# this many seconds), so the port accepts callers with their request already
# there. Without it, a third of fresh callers in ``make bench`` were accepted
# before their request, and each cost a wake-up and a watch more.
TCP_DEFER_ACCEPT: int | None = getattr(socket, "TCP_DEFER_ACCEPT", None)
DEFER_SECONDS = 1
# A drain keeps the port open this long at most for connections the kernel
# still holds: it hands each over when it re-sends its SYN-ACK, after 1 s.
HAND_OVER_WAIT = 1.5
HAND_OVER_POLL = 0.05  # how often the drain looks (no event says the kernel let go)

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]  # a task group's start_soon
# Linux's epoll, for ``FirstBytes``; elsewhere the loop's add_reader does its job.
EPOLL: Callable[[], select.epoll] | None = getattr(select, "epoll", None)


_GONE = asyncio.Protocol()  # the protocol of a closed CallerSocket


class SocketState(enum.Enum):
    RAW = "raw"  # ours alone: written to directly, not watched by the loop
    WATCHED = "watched"  # ours, and the loop tells us when the first bytes come
    PROMOTING = "promoting"  # being handed to the loop; writes and closes wait, in order
    PROMOTED = "promoted"  # the loop's transport does everything
    CLOSED = "closed"


class CallerSocket(asyncio.Protocol):
    """A transport over an accepted socket, that becomes the loop's once it must read.

    It is also the loop transport's protocol after the hand-over, passing
    every event on to its own protocol, so the ``CallerConnection`` (or a
    splice, after an upgrade) keeps the one transport it was given.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        peer: object,
        protocol: asyncio.Protocol,
        *,
        spawn: Spawn,
        first_bytes: FirstBytes,
    ) -> None:
        self._loop = loop
        self._first_bytes = first_bytes
        self._fd = fd
        self._peer = peer
        self._protocol = protocol  # a splice's end after an upgrade; _GONE once lost
        self._spawn = spawn
        self.state = SocketState.RAW
        self._sock: socket.socket | None = None  # made only when something needs one
        self._transport: asyncio.Transport | None = None  # the loop's, once PROMOTED
        # While PROMOTING: what the protocol asked for, done on the loop's transport.
        self._backlog: list[bytes] = []
        self._backlog_size = 0
        self._reading = True
        self._eof_asked = False
        self._end_asked = ""  # "close" or "abort"
        self._paused_writing = False  # we told the protocol to pause
        self._loop_paused_writing = False  # the loop's transport did
        self._limits: tuple[int | None, int | None] | None = None

    # --- the raw socket ----------------------------------------------------------------

    def first_read(self, caller: CallerConnection) -> None:
        """Read what came with the connection; keep the socket only if nothing more is needed."""
        if self.state is SocketState.WATCHED:
            self._unwatch()
        if self.state is not SocketState.RAW:
            return  # answered (and closed) or being handed over already, e.g. a refusal
        try:
            data = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            # Connected, nothing sent yet (the gateway was quicker than the
            # caller's write: a third of fresh connections in ``make bench``).
            # A caller that stays silent meets the header timeout as ever.
            self.state = SocketState.WATCHED
            self._first_bytes.watch(self._fd, self, caller)
            return
        except OSError as exc:  # reset already
            self._lose(exc)
            return
        if data:
            caller.data_received(data)
        elif not caller.eof_received():
            self.close()
        if self.state is SocketState.RAW and not caller.heard_all:
            self._promote()

    def _unwatch(self) -> None:
        self._first_bytes.forget(self._fd)
        self.state = SocketState.RAW

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(fileno=self._fd)
        return self._sock

    def _lose(self, exc: Exception | None) -> None:
        """Close now, and tell the protocol one callback later, as the loop's transports do."""
        if self.state is SocketState.WATCHED:
            self._unwatch()
        self.state = SocketState.CLOSED
        if self._sock is not None:
            self._sock.close()  # (nothing to do if the loop's transport took it)
        else:
            os.close(self._fd)
        self._loop.call_soon(self.connection_lost, exc)

    # --- the hand-over to the loop ----------------------------------------------------

    def _promote(self) -> None:
        if self.state is SocketState.WATCHED:
            self._unwatch()
        if self.state is SocketState.RAW:
            self.state = SocketState.PROMOTING
            self._spawn(self._hand_over)

    async def _hand_over(self) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: self, self._socket())
        except Exception as exc:  # e.g. the caller reset meanwhile
            if self.state is SocketState.PROMOTING:
                log.debug("caller %s: the loop could not take the socket: %s", self._peer, exc)
                self._lose(exc)
        finally:
            if self.state is SocketState.PROMOTING:  # cancelled: the gateway is stopping
                self._lose(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The loop's transport is ready: do what was asked meanwhile, in order."""
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        loop_transport = self._transport = cast(asyncio.Transport, transport)
        self.state = SocketState.PROMOTED
        if self._end_asked == "abort":
            loop_transport.abort()
            return
        if self._limits is not None:
            loop_transport.set_write_buffer_limits(*self._limits)
        if not self._reading:
            loop_transport.pause_reading()
        backlog, self._backlog = self._backlog, []
        for data in backlog:
            loop_transport.write(data)
        if self._paused_writing and not self._loop_paused_writing:
            self._paused_writing = False
            self._protocol.resume_writing()
        if self._eof_asked:
            loop_transport.write_eof()
        if self._end_asked == "close":
            loop_transport.close()

    # --- asyncio.Protocol, for the loop's transport: pass it all on --------------------

    def data_received(self, data: bytes) -> None:
        self._protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self._protocol.eof_received()

    def pause_writing(self) -> None:
        self._loop_paused_writing = True
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._loop_paused_writing = False
        self._protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = SocketState.CLOSED
        if self._protocol is not _GONE:  # once, whichever of us and the loop's transport says it
            protocol, self._protocol = self._protocol, _GONE  # no cycle left for the GC
            protocol.connection_lost(exc)

    # --- asyncio.Transport, for the protocol -------------------------------------------

    def write(self, data: bytes) -> None:
        if self.state is SocketState.RAW or self.state is SocketState.WATCHED:
            try:
                sent = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:  # the caller is gone
                self._lose(exc)
                return
            if sent == len(data):
                return
            data = data[sent:]  # the kernel's buffer is full: the loop's transport waits
            self._promote()
        if self._transport is not None:
            self._transport.write(data)
        elif self.state is SocketState.PROMOTING and not self._end_asked:
            self._backlog.append(data)
            self._backlog_size += len(data)
            if self._backlog_size > HIGH_WATER and not self._paused_writing:
                self._paused_writing = True
                self._protocol.pause_writing()

    def write_eof(self) -> None:
        if self._transport is not None:
            self._transport.write_eof()
        elif self.state is not SocketState.CLOSED:
            self._eof_asked = True
            self._promote()  # what the caller sends after a half-close is read by the loop

    def can_write_eof(self) -> bool:
        return True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._limits = (high, low)
        if self._transport is not None:
            self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        if self._transport is not None:
            return self._transport.get_write_buffer_size()
        return self._backlog_size

    def close(self) -> None:
        if self.state is SocketState.RAW or self.state is SocketState.WATCHED:
            self._lose(None)
        elif self.state is SocketState.PROMOTING:
            self._end_asked = self._end_asked or "close"
        elif self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self.state is SocketState.PROMOTING:
            self._end_asked = "abort"
        elif self._transport is not None:
            self._transport.abort()
        else:
            self.close()

    def is_closing(self) -> bool:
        if self._transport is not None:
            return self._transport.is_closing()
        return self.state is SocketState.CLOSED or bool(self._end_asked)

    def pause_reading(self) -> None:
        self._reading = False
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._reading = True
        if self._transport is not None:
            self._transport.resume_reading()
        else:
            self._promote()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._transport is not None:
            return self._transport.get_extra_info(name, default)
        if name == "peername":
            return self._peer
        if self.state is SocketState.CLOSED:
            return default
        if name == "socket":
            return self._socket()
        if name == "sockname":
            return self._socket().getsockname()
        return default


class FirstBytes:
    """Accepted sockets whose first bytes have not come yet, watched until they do.

    On Linux in an epoll set of our own, which the loop watches as one file.
    The loop's ``add_reader`` would cost a handle per socket and, in uvloop,
    six epoll_ctl calls and an ioctl (libuv checks the descriptor, adds it and
    removes it again); a one-shot registration here is one epoll_ctl, and one
    epoll_wait serves every socket that became readable together.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: dict[int, tuple[CallerSocket, CallerConnection]] = {}
        self._epoll = EPOLL() if EPOLL is not None else None
        if self._epoll is not None:
            loop.add_reader(self._epoll.fileno(), self._ready)

    def __len__(self) -> int:
        return len(self._waiting)

    def watch(self, fd: int, transport: CallerSocket, caller: CallerConnection) -> None:
        """Call ``transport.first_read(caller)`` once ``fd`` is readable (or hung up)."""
        self._waiting[fd] = (transport, caller)
        if self._epoll is not None:
            # One-shot: it is disarmed when it fires, so nothing is left to remove.
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
        else:
            self._loop.add_reader(fd, self._readable, fd)

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` before it is closed or handed over (a no-op once it fired)."""
        if self._waiting.pop(fd, None) is None:
            return
        if self._epoll is None:
            _stop_watching(self._loop, fd)
        elif not self._epoll.closed:
            self._epoll.unregister(fd)

    def _ready(self) -> None:
        assert self._epoll is not None
        for fd, _ in self._epoll.poll(0):
            self._readable(fd)

    def _readable(self, fd: int) -> None:
        entry = self._waiting.pop(fd, None)
        if entry is None:
            return  # forgotten in this same batch
        if self._epoll is None:
            _stop_watching(self._loop, fd)
        transport, caller = entry
        try:
            transport.first_read(caller)
        except Exception:
            _lost_to_a_bug(transport)

    def close(self) -> None:
        if self._epoll is not None and not self._epoll.closed:
            _stop_watching(self._loop, self._epoll.fileno())
            self._epoll.close()


def _lost_to_a_bug(transport: CallerSocket) -> None:
    """An unexpected error serving one caller: lose that connection, not the port."""
    log.exception("caller %s: unexpected error", transport.get_extra_info("peername"))
    transport.abort()


class PublicPort:
    """The plain public port's listening sockets, and the accept loop that makes callers.

    ``stop_accepting`` closes the listening sockets (a drain); ``close`` also
    stops watching the callers still silent, once they are gone.
    """

    def __init__(
        self,
        listeners: list[socket.socket],
        make_caller: Callable[[], CallerConnection],
        spawn: Spawn,
    ) -> None:
        self.listeners = listeners
        self._make_caller = make_caller
        self._spawn = spawn
        self._loop: asyncio.AbstractEventLoop | None = None
        self.first_bytes: FirstBytes | None = None
        self._deferring = False  # TCP_DEFER_ACCEPT is on: the kernel may hold callers

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.first_bytes = FirstBytes(self._loop)
        self._deferring = DEFER_SECONDS > 0 and set_on_listeners(
            self.listeners, TCP_DEFER_ACCEPT, DEFER_SECONDS
        )
        for listener in self.listeners:
            self._loop.add_reader(listener.fileno(), self.accept, listener)

    def accept(self, listener: socket.socket) -> bool:
        """Take what the kernel has completed (a batch at most) and serve each first read.

        True when the queue is empty (or cannot be taken now).
        """
        loop = self._loop
        first_bytes = self.first_bytes
        assert loop is not None and first_bytes is not None
        # (fd, address): CPython's accept without the socket object around it
        accept = listener._accept  # type: ignore[attr-defined]
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:  # out of file descriptors, most likely: back off
                log.warning(
                    "public port: cannot accept (%s); trying again in %g s", exc, ACCEPT_RETRY
                )
                self._pause(listener)
                return True
            os.set_blocking(fd, False)
            caller = self._make_caller()
            transport = CallerSocket(
                loop, fd, peer, caller, spawn=self._spawn, first_bytes=first_bytes
            )
            try:
                caller.connection_made(transport)  # type: ignore[arg-type]  # a transport in all but name
                transport.first_read(caller)
            except Exception:
                _lost_to_a_bug(transport)
        return False

    def accept_queued(self) -> None:
        """Serve every connection the kernel has completed: a drain's last accept."""
        for listener in self.listeners:
            if listener.fileno() >= 0:
                while not self.accept(listener):
                    pass

    def _pause(self, listener: socket.socket) -> None:
        assert self._loop is not None
        _stop_watching(self._loop, listener.fileno())
        self._loop.call_later(ACCEPT_RETRY, self._resume, listener)

    def _resume(self, listener: socket.socket) -> None:
        if listener.fileno() >= 0 and self._loop is not None:
            self._loop.add_reader(listener.fileno(), self.accept, listener)

    async def stop_accepting(self) -> None:
        """Close the listening sockets once every caller the kernel holds is ours.

        A deferred connection has connected, as its caller sees it, but waits
        in the kernel for its first bytes: closing the port would reset it when
        they come (a load balancer connects, then sends). So deferring stops,
        and the port stays open while the kernel holds any, at most
        ``HAND_OVER_WAIT``. Callers that come meanwhile are taken on too, and
        answered with ``Connection: close`` like every caller of a drain.
        """
        try:
            if self._deferring:
                self._deferring = False
                set_on_listeners(self.listeners, TCP_DEFER_ACCEPT, 0)
                ports = frozenset(listener.getsockname()[1] for listener in self.listeners)
                if _kernel_holds(ports):  # (at once: nothing held is the common case)
                    with anyio.move_on_after(HAND_OVER_WAIT):
                        await anyio.sleep(HAND_OVER_POLL)
                        # (a thread: the tables list every socket, thousands under load)
                        while await anyio.to_thread.run_sync(_kernel_holds, ports):  # noqa: ASYNC110 - no event for it
                            await anyio.sleep(HAND_OVER_POLL)
        finally:
            self.accept_queued()
            self._close_listeners()

    def _close_listeners(self) -> None:
        """The kernel refuses new connections from now on; callers accepted are still served."""
        for listener in self.listeners:
            if listener.fileno() >= 0:
                if self._loop is not None:
                    _stop_watching(self._loop, listener.fileno())
                listener.close()

    def close(self) -> None:
        """Stop accepting, and stop watching (every caller is closed by now)."""
        self._close_listeners()
        if self.first_bytes is not None:
            self.first_bytes.close()


def _stop_watching(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """``loop.remove_reader``, whatever it returns: typed bool, uvloop may say None, and
    compiled code checks what a call returns."""
    remove: Any = loop.remove_reader
    remove(fd)


def set_on_listeners(listeners: Sequence[socket.socket], option: int | None, value: int) -> bool:
    """Set the TCP ``option`` to ``value`` on every listening socket, all or none.

    False, with each left at 0 (the kernel's default), where the option does
    not exist (None: not Linux) or a socket refuses it (not TCP after all).
    """
    if option is None:
        return False
    try:
        for listener in listeners:
            listener.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        for listener in listeners:
            with contextlib.suppress(OSError):
                listener.setsockopt(socket.IPPROTO_TCP, option, 0)
        return False
    return True


def _kernel_holds(ports: frozenset[int]) -> bool:
    """Whether the kernel holds a connection to one of ``ports`` that is not ours yet.

    Such connections are in SYN_RECV (state 03) in /proc/net/tcp and tcp6,
    which list every socket of this network namespace; False without them.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, "rb") as rows:
                next(rows, None)  # the column names
                for row in rows:
                    fields = row.split(None, 4)
                    if fields[3] == b"03" and int(fields[1].rpartition(b":")[2], 16) in ports:
                        return True
        except OSError:
            continue
    return False


def open_listeners(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` means, as ``loop.create_server`` opens them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
            listener.listen(backlog)
            listener.setblocking(False)
    except BaseException:
        for listener in listeners:
            with contextlib.suppress(OSError):
                listener.close()
        raise
    return listeners
