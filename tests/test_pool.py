"""The pool's bookkeeping (src/revgw/_pool.py), without sockets.

Who gets which tunnel connection is decided synchronously by ``Tunnel`` and
``Registry``; these tests drive them with a fake connection that only has a
name and records whether it was closed.
"""

from __future__ import annotations

import logging

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from revgw._errors import NoTunnel, PoolTimeout, TunnelOffline
from revgw._pool import Registry, Tunnel


class FakeConn:
    """Stands in for a TunnelConnection: the pool needs ``name``, ``usable`` and ``close()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    @property
    def usable(self) -> bool:
        return not self.closed

    def __repr__(self) -> str:
        return f"<FakeConn {self.name}>"

    def close(self) -> None:
        self.closed = True


def joined(tunnel: Tunnel[FakeConn], *names: str, client: str = "c1") -> list[FakeConn]:
    conns = [FakeConn(name) for name in names]
    for conn in conns:
        tunnel.join(conn, client)
    return conns


def counts(tunnel: Tunnel[FakeConn]) -> tuple[int, int, int, int]:
    """(live, idle, warm, waiting)"""
    return len(tunnel.live), tunnel.idle_count, tunnel.warm_count, tunnel.waiting_count


# --- offer / take ------------------------------------------------------------------


def test_idle_connections_are_taken_oldest_first() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=8)
    a, b, c = joined(tunnel, "a", "b", "c")
    for conn in (a, b, c):
        tunnel.offer(conn)
    assert [tunnel.take(), tunnel.take(), tunnel.take()] == [a, b, c]
    assert tunnel.take() is None


def test_warm_connections_are_taken_newest_first_and_before_idle_ones() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=8)
    idle, w1, w2 = joined(tunnel, "idle", "w1", "w2")
    tunnel.offer(idle)
    tunnel.offer(w1, warm=True)
    tunnel.offer(w2, warm=True)
    assert counts(tunnel) == (3, 1, 2, 0)
    assert [tunnel.take(), tunnel.take(), tunnel.take()] == [w2, w1, idle]
    assert counts(tunnel) == (3, 0, 0, 0)


def test_offer_of_a_connection_that_never_joined_or_already_left_is_ignored() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=8)
    stranger = FakeConn("stranger")
    tunnel.offer(stranger)
    (gone,) = joined(tunnel, "gone")
    tunnel.leave(gone, "c1")
    tunnel.offer(gone)
    tunnel.offer(gone, warm=True)
    assert tunnel.take() is None
    assert counts(tunnel) == (0, 0, 0, 0)


def test_withdrawn_connections_are_not_handed_out() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=8)
    a, b = joined(tunnel, "a", "b")
    tunnel.offer(a)
    tunnel.offer(b, warm=True)
    tunnel.withdraw(a)
    tunnel.withdraw(b)
    tunnel.withdraw(b)  # twice is harmless
    assert tunnel.take() is None
    assert counts(tunnel) == (2, 0, 0, 0)
    assert tunnel.online


def test_max_warm_cap_closes_the_extra_warm_connection() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=2)
    a, b, c = joined(tunnel, "a", "b", "c")
    for conn in (a, b, c):
        tunnel.offer(conn, warm=True)
    assert (a.closed, b.closed, c.closed) == (False, False, True)
    assert tunnel.warm_count == 2
    # an idle offer is never capped
    tunnel.offer(c)
    assert tunnel.idle_count == 1


def test_max_warm_zero_keeps_no_warm_connection() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=0)
    (a,) = joined(tunnel, "a")
    tunnel.offer(a, warm=True)
    assert a.closed
    assert tunnel.take() is None


def test_leave_forgets_the_connection_and_counts_clients() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=8)
    a1, a2 = joined(tunnel, "a1", "a2", client="alpha")
    (b1,) = joined(tunnel, "b1", client="beta")
    tunnel.offer(a1)
    tunnel.offer(b1, warm=True)
    assert tunnel.clients == {"alpha": 2, "beta": 1}
    tunnel.leave(a1, "alpha")
    tunnel.leave(b1, "beta")
    tunnel.leave(b1, "beta")  # a second leave changes nothing
    assert tunnel.clients == {"alpha": 1}
    assert counts(tunnel) == (1, 0, 0, 0)
    assert tunnel.online
    tunnel.leave(a2, "alpha")
    assert not tunnel.online
    assert tunnel.clients == {}
    assert repr(tunnel) == "<Tunnel t live=0 idle=0 warm=0 waiting=0>"


# --- acquire: waiting in line ----------------------------------------------------------


async def test_acquire_takes_a_free_connection_without_waiting() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=8)
    (a,) = joined(tunnel, "a")
    tunnel.offer(a)
    assert await tunnel.acquire(0.01) is a
    assert counts(tunnel) == (1, 0, 0, 0)


async def test_acquire_on_a_tunnel_without_connections_is_offline_at_once() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("docs", max_warm=8)
    with pytest.raises(TunnelOffline) as info:
        await tunnel.acquire(10)
    assert "tunnel 'docs' is offline" in str(info.value)
    assert "revgw client" in str(info.value)
    assert tunnel.waiting_count == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=8)
    a, b = joined(tunnel, "a", "b")  # live but busy: nothing offered yet
    got: dict[str, FakeConn] = {}

    async def wait(label: str) -> None:
        got[label] = await tunnel.acquire(5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "first")
        await wait_all_tasks_blocked()
        tg.start_soon(wait, "second")
        await wait_all_tasks_blocked()
        assert tunnel.waiting_count == 2
        tunnel.offer(a, warm=True)  # a waiter gets it whatever its kind
        tunnel.offer(b)
    assert got == {"first": a, "second": b}
    assert counts(tunnel) == (2, 0, 0, 0)


async def test_acquire_times_out_with_pool_timeout_and_leaves_no_waiter() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("busy", max_warm=8)
    joined(tunnel, "a")
    with pytest.raises(PoolTimeout) as info:
        await tunnel.acquire(0.05)
    assert "tunnel 'busy'" in str(info.value)
    assert "--pool" in str(info.value)
    assert info.value.retry_after is not None
    assert tunnel.waiting_count == 0


async def test_last_connection_leaving_fails_every_waiter_with_tunnel_offline() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=8)
    a, b = joined(tunnel, "a", "b")
    errors: list[Exception] = []

    async def wait() -> None:
        try:
            await tunnel.acquire(30)
        except TunnelOffline as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(wait)
            await wait_all_tasks_blocked()
            assert tunnel.waiting_count == 3
            tunnel.leave(a, "c1")  # not the last: they keep waiting
            await wait_all_tasks_blocked()
            assert tunnel.waiting_count == 3
            assert errors == []
            tunnel.leave(b, "c1")
    assert len(errors) == 3
    assert all("tunnel 't' is offline" in str(e) for e in errors)
    assert counts(tunnel) == (0, 0, 0, 0)


async def test_cancelled_acquire_leaves_no_waiter_behind() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=8)
    (a,) = joined(tunnel, "a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(tunnel.acquire, 30)
        await wait_all_tasks_blocked()
        assert tunnel.waiting_count == 1
        tg.cancel_scope.cancel()
    assert tunnel.waiting_count == 0
    tunnel.offer(a)  # nobody left to hand it to: it stays in the pool
    assert counts(tunnel) == (1, 1, 0, 0)


async def test_connection_handed_to_a_cancelled_waiter_goes_back_to_the_pool() -> None:
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=8)
    (a,) = joined(tunnel, "a")
    result: list[FakeConn] = []

    async def wait() -> None:
        result.append(await tunnel.acquire(30))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await wait_all_tasks_blocked()
        tg.cancel_scope.cancel()  # the waiter is told to stop ...
        tunnel.offer(a)  # ... and is handed a connection before it ran again
    assert result == []
    assert counts(tunnel) == (1, 1, 0, 0)
    assert tunnel.take() is a
    assert not a.closed


# --- the registry: hosts and routes ---------------------------------------------------------


def test_route_sends_unclaimed_hosts_to_the_default_tunnel() -> None:
    registry: Registry[FakeConn] = Registry("default", max_warm=8)
    assert set(registry.tunnels) == {"default"}
    docs = registry.claim("docs", ("docs.test", "www.docs.test"))
    assert registry.route("docs.test") is docs
    assert registry.route("www.docs.test") is docs
    assert registry.route("other.test") is registry.tunnels["default"]
    assert registry.route("") is registry.tunnels["default"]


def test_route_without_default_tunnel_raises_no_tunnel_naming_the_host() -> None:
    registry: Registry[FakeConn] = Registry("", max_warm=8)
    assert registry.tunnels == {}
    registry.claim("docs", ("docs.test",))
    assert registry.route("docs.test").name == "docs"
    with pytest.raises(NoTunnel) as info:
        registry.route("other.test")
    assert info.value.status == 404
    assert "other.test" in str(info.value)
    assert "--host other.test" in str(info.value)


def test_claiming_a_host_served_by_another_live_tunnel_is_refused() -> None:
    registry: Registry[FakeConn] = Registry("default", max_warm=8)
    docs = registry.claim("docs", ("docs.test",))
    docs.join(FakeConn("d1"), "c1")
    with pytest.raises(ValueError, match=r"host docs\.test is already served by tunnel 'docs'"):
        registry.claim("blog", ("blog.test", "docs.test"))
    # nothing of the refused claim stuck
    assert registry.route("docs.test") is docs
    assert registry.route("blog.test").name == "default"
    assert docs.hosts == {"docs.test"}


def test_the_same_tunnel_may_claim_its_hosts_again() -> None:
    registry: Registry[FakeConn] = Registry("default", max_warm=8)
    docs = registry.claim("docs", ("docs.test",))
    docs.join(FakeConn("d1"), "c1")
    assert registry.claim("docs", ("docs.test", "more.test")) is docs
    assert docs.hosts == {"docs.test", "more.test"}


def test_an_offline_tunnels_host_stays_bound_until_another_tunnel_takes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    registry: Registry[FakeConn] = Registry("default", max_warm=8)
    old = registry.claim("old", ("app.test",))
    conn = FakeConn("o1")
    old.join(conn, "c1")
    old.leave(conn, "c1")
    # offline, but its host still routes to it (callers get "offline", not another service)
    assert registry.route("app.test") is old
    new = registry.claim("new", ("app.test",))
    assert registry.route("app.test") is new
    assert old.hosts == set()
    assert new.hosts == {"app.test"}
    moves = [r.getMessage() for r in caplog.records if "moves" in r.getMessage()]
    assert moves == ["host app.test moves from offline tunnel 'old' to 'new'"]


def test_take_skips_a_connection_that_went_away_before_telling_the_pool() -> None:
    """A reset closes the transport a loop turn before the pool hears of it."""
    tunnel: Tunnel[FakeConn] = Tunnel("t", max_warm=4)
    dead, live = joined(tunnel, "dead", "live")
    tunnel.offer(dead)
    tunnel.offer(live)
    dead.closed = True  # closed, but leave() has not run yet
    assert tunnel.take() is live
    assert tunnel.take() is None
