"""The gateway's tunnels and their pools: bookkeeping first, I/O around it.

A tunnel is a name, the Host names routed to it, and the connections its
clients dialled in. Deciding who gets which connection is synchronous and
has no I/O: connections are *offered* when they become usable (handshake
done, PONG received, response finished on a warm one) and *withdrawn* when
they stop being usable (PING outstanding, closed). A request takes one at
once if it can, otherwise it queues, first come first served, until a
connection is offered, the tunnel goes offline, or its wait runs out.

Two kinds of usable connection:

* *idle*: fresh from the client, waiting for ``START``; handed out oldest
  first, which spreads requests over all clients of a tunnel.
* *warm*: has carried a request and is still spliced to a live connection to
  the private server; handed out newest first, so the extras age out.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Generic, Protocol, TypeVar

import anyio

from ._errors import NoTunnel, PoolTimeout, TunnelOffline
from ._tokens import Access

log = logging.getLogger("revgw.gateway")


class Pooled(Protocol):
    """What the pool needs of a connection."""

    name: str

    @property
    def usable(self) -> bool:
        """False once it is going away, even before it has told the pool so."""
        ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Pooled)


class _Waiter(Generic[C]):
    __slots__ = ("conn", "error", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.conn: C | None = None
        self.error: Exception | None = None


class Tunnel(Generic[C]):
    """One named tunnel: its hosts, live connections, usable ones, and who waits."""

    def __init__(self, name: str, max_warm: int) -> None:
        self.name = name
        self.hosts: set[str] = set()
        # Who may reach it: set by its first client, kept while it is online (_tokens.py).
        self.access = Access()
        self.live: set[C] = set()
        self.clients: dict[str, int] = {}
        self.draining_clients: set[str] = set()  # said DRAIN: none of theirs kept warm
        self._idle: dict[C, None] = {}  # insertion-ordered set: oldest first
        self._warm: dict[C, None] = {}  # newest last
        self._waiters: deque[_Waiter[C]] = deque()
        self._max_warm = max_warm

    def __repr__(self) -> str:
        return (
            f"<Tunnel {self.name} live={len(self.live)} idle={len(self._idle)} "
            f"warm={len(self._warm)} waiting={len(self._waiters)}>"
        )

    @property
    def online(self) -> bool:
        return bool(self.live)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def warm_count(self) -> int:
        return len(self._warm)

    @property
    def waiting_count(self) -> int:
        return len(self._waiters)

    # --- connections come and go ---------------------------------------------

    def join(self, conn: C, client: str) -> None:
        """A connection finished its handshake for this tunnel."""
        self.live.add(conn)
        self.clients[client] = self.clients.get(client, 0) + 1

    def leave(self, conn: C, client: str) -> None:
        """A connection closed. If it was the last, fail everyone waiting."""
        if conn not in self.live:
            return
        self.live.discard(conn)
        self._idle.pop(conn, None)
        self._warm.pop(conn, None)
        left = self.clients.get(client, 1) - 1
        if left:
            self.clients[client] = left
        else:
            self.clients.pop(client, None)
        if not self.live:
            self.access = Access()
            while self._waiters:
                waiter = self._waiters.popleft()
                waiter.error = self.offline_error()
                waiter.event.set()

    def offer(self, conn: C, warm: bool = False) -> None:
        """``conn`` is usable: hand it to the longest waiter, or keep it."""
        if conn not in self.live:
            return
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.conn = conn
            waiter.event.set()
        elif not warm:
            self._idle[conn] = None
        elif len(self._warm) < self._max_warm:
            self._warm[conn] = None
        else:
            conn.close()

    def withdraw(self, conn: C) -> None:
        """``conn`` is not usable for now (a PING is outstanding, or it is going away)."""
        self._idle.pop(conn, None)
        self._warm.pop(conn, None)

    def take(self) -> C | None:
        """A usable connection at once, warm ones first; None if there is none.

        A connection reset by its peer can still be listed here for one loop
        turn after its transport closed; it is skipped, never handed out.
        """
        while self._warm or self._idle:
            if self._warm:
                conn = self._warm.popitem()[0]
            else:
                conn = next(iter(self._idle))
                del self._idle[conn]
            if conn.usable:
                return conn
        return None

    async def acquire(self, timeout: float) -> C:  # noqa: ASYNC109 - its end is a 503, not a cancel
        """Take a connection, waiting up to ``timeout`` seconds in line for one.

        Raises TunnelOffline when the tunnel has (or comes to have) no
        connection at all, PoolTimeout when none frees up in time. On any
        exit, cancellation included, a connection handed over too late goes
        back to the pool.
        """
        conn = self.take()
        if conn is not None:
            return conn
        if not self.live:
            raise self.offline_error()
        waiter: _Waiter[C] = _Waiter()
        self._waiters.append(waiter)
        try:
            with anyio.fail_after(timeout):
                await waiter.event.wait()
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if waiter.conn is not None:
                self.offer(waiter.conn)
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"tunnel '{self.name}' had no free connection within {timeout:g} s; "
                    "its clients are all busy: retry, or run clients with a larger --pool"
                ) from None
            raise
        if waiter.error is not None:
            raise waiter.error
        assert waiter.conn is not None
        return waiter.conn

    def offline_error(self) -> TunnelOffline:
        return TunnelOffline(
            f"tunnel '{self.name}' is offline: no revgw client is connected for it. "
            f"Start one next to the private server: "
            f"revgw client --gateway <this-host>:9001 --tunnel {self.name} --token <token>"
        )


class Registry(Generic[C]):
    """All tunnels of a gateway, and which Host goes to which tunnel."""

    def __init__(self, default_tunnel: str, max_warm: int) -> None:
        self.tunnels: dict[str, Tunnel[C]] = {}
        self._host_owner: dict[str, str] = {}
        self._wildcards = False  # has any tunnel claimed a *. host? (skip the search if not)
        self._default = default_tunnel
        self._max_warm = max_warm
        if default_tunnel:
            self.tunnel(default_tunnel)

    def tunnel(self, name: str) -> Tunnel[C]:
        tunnel = self.tunnels.get(name)
        if tunnel is None:
            tunnel = self.tunnels[name] = Tunnel(name, self._max_warm)
        return tunnel

    def claim(self, name: str, hosts: tuple[str, ...], access: Access | None = None) -> Tunnel[C]:
        """Bind ``hosts`` to tunnel ``name``; raise ValueError if another live tunnel has one.

        A Host stays bound while its tunnel is offline, so its callers get
        "tunnel offline" instead of silently reaching some other service.
        The first client of a tunnel sets its access rules; while it is online
        a client declaring other rules is refused (ValueError), so no client
        can open up a tunnel that another one protects.
        """
        for host in hosts:
            owner = self._host_owner.get(host)
            if owner is not None and owner != name and self.tunnels[owner].online:
                raise ValueError(f"host {host} is already served by tunnel '{owner}'")
        access = access or Access()
        tunnel = self.tunnel(name)
        if tunnel.online and tunnel.access != access:
            raise ValueError(
                f"tunnel '{name}' is online with other access rules ({tunnel.access.describe()}"
                f" vs {access.describe()}): give every client of a tunnel the same "
                "--basic-auth and --allow-cidr"
            )
        if not tunnel.online:
            tunnel.access = access
        for host in hosts:
            previous = self._host_owner.get(host)
            if previous is not None and previous != name:
                self.tunnels[previous].hosts.discard(host)
                log.info("host %s moves from offline tunnel '%s' to '%s'", host, previous, name)
            self._host_owner[host] = name
            if host.startswith("*."):
                self._wildcards = True
            tunnel.hosts.add(host)
        return tunnel

    def route(self, host: str) -> Tunnel[C]:
        """The tunnel for a request's Host; raise NoTunnel if none and no default."""
        name = self._host_owner.get(host)
        if name is None and self._wildcards:  # (no wildcard claimed, nothing to search)
            name = self._wildcard_owner(host)
        name = name or self._default
        if not name:
            raise NoTunnel(
                f"no tunnel serves host '{host}'. A client claims a host with "
                f"revgw client --tunnel NAME --host {host or 'HOSTNAME'}"
            )
        return self.tunnel(name)

    def _wildcard_owner(self, host: str) -> str | None:
        """The tunnel claiming the most specific ``*.`` wildcard above ``host``, if any."""
        labels = host.split(".")
        for start in range(1, len(labels)):
            owner = self._host_owner.get("*." + ".".join(labels[start:]))
            if owner is not None:
                return owner
        return None
