"""A client whose pool is bigger than the gateway lets it hold: said once, held, no flood.

The gateway answers ``REVGW/1 BUSY`` beyond ``--max-conns-per-client`` (or
``--max-conns-per-tunnel``), and BUSY means "not now": the client keeps what it
was given and retries with backoff. What a user must see at ``--log-level
warning`` is one line saying so, not one line per attempt: re-dialling the
whole shortfall on every retry made the gateway log one refusal per connection
(80 793 lines in 40 s for a pool of 10 000 against the default limit of 1024).
"""

from __future__ import annotations

import gc
import logging

import anyio
import pytest

from conftest import TOKEN, ClientFactory, GatewayFactory
from helpers import FakeGateway, get, read_line
from revgw import Client, _client
from revgw import _handshake as hs


def warnings_from(caplog: pytest.LogCaptureFixture, role: str) -> list[str]:
    """What ``revgw <role> --log-level warning`` would have printed."""
    return lines_from(caplog, role, logging.WARNING)


def lines_from(caplog: pytest.LogCaptureFixture, role: str, level: int = logging.INFO) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == f"revgw.{role}" and r.levelno >= level
    ]


async def logged(caplog: pytest.LogCaptureFixture, role: str, *words: str, after: int = 0) -> str:
    """Wait (bounded) for a line of ``role`` with all of ``words``, past its first ``after``."""
    with anyio.fail_after(5):
        while True:
            for line in lines_from(caplog, role)[after:]:
                if all(word in line for word in words):
                    return line
            await anyio.sleep(0.01)


async def test_a_pool_over_the_per_client_limit_is_held_and_said_once(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with (
        make_gateway(max_conns_per_client=5) as gw,
        make_client(gw, pool=50, wait=False, max_backoff=0.5) as client,
    ):
        said = await logged(caplog, "client", "the gateway is busy")
        # The first round dialled all 50: 45 were refused, and the client learnt of the limit.
        first_round = gw.stats.handshakes["busy"]
        assert first_round == 45
        # Watch several retries (backoff 0.1-0.2 s, then up to 0.5 s): the pool stays at 5.
        for _ in range(20):
            await anyio.sleep(0.1)
            assert client.idle_count == 5
        assert gw.registry.tunnel("default").clients[client.settings.client_id] == 5
        # Then one refused handshake per retry, not the 45 missing connections every time.
        refused = gw.stats.handshakes["busy"] - first_round
        assert 1 <= refused <= 20, f"{refused} BUSY refusals in 2 s"

    assert warnings_from(caplog, "client") == [said]
    assert "(--max-conns-per-client)" in said
    assert "holding the pool at 5 of 50 connections" in said
    assert "retrying in" in said


async def test_a_long_busy_spell_is_recalled_at_a_bounded_rate(
    make_gateway: GatewayFactory,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_client, "BUSY_REPEAT", 0.6)
    caplog.set_level(logging.INFO, logger="revgw")
    async with (
        make_gateway(max_conns_per_client=2) as gw,
        make_client(gw, pool=10, wait=False, max_backoff=0.1) as client,
    ):
        with anyio.fail_after(5):
            await client.wait_ready(2)
        await anyio.sleep(1.5)

    first, *again = warnings_from(caplog, "client")
    assert "holding the pool at 2 of 10 connections" in first
    assert 1 <= len(again) <= 4, again  # about every 0.6 s, while retries come every 0.1 s
    for line in again:
        assert "still busy" in line and "holding the pool at 2 of 10 connections" in line
        assert "attempts refused since" in line


async def test_a_capped_pool_fills_up_by_itself_when_room_appears(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with (
        make_gateway(max_conns_per_tunnel=6) as gw,
        make_client(gw, pool=4, client_id="first") as first,
        make_client(gw, pool=4, client_id="second", wait=False, max_backoff=0.3) as second,
    ):
        said = await logged(caplog, "client", "the gateway is busy")
        await anyio.sleep(0.5)  # a few refused retries
        assert second.idle_count == 2
        before = len(lines_from(caplog, "client"))  # "first" said it was connected: not that
        await first.drain(grace=0)  # its connections close, none re-dialled: room for two
        with anyio.fail_after(5):
            await second.wait_ready()
        assert second.idle_count == 4
        await logged(caplog, "client", "connected to gateway", "4 idle", after=before)

    assert warnings_from(caplog, "client") == [said]
    assert "(--max-conns-per-tunnel)" in said and "holding the pool at 2 of 4" in said


# --- dialling a big pool -------------------------------------------------------------------


async def test_a_big_pool_is_dialled_a_bounded_number_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10 000 dials at once left ~7 KiB per pooled connection behind in the client's heap.

    (Their tasks, timers and frames, all alive at the same moment, were freed
    after the fill into memory the allocator could not give back.) Dials now go
    DIAL_AT_ONCE at a time, the next one as soon as one is done.
    """
    monkeypatch.setattr(_client, "DIAL_AT_ONCE", 4)
    async with (
        FakeGateway() as fake,
        Client(gateway=fake.address, target="127.0.0.1:9", token=TOKEN, pool=10) as client,
    ):
        accepted = []
        with anyio.fail_after(5):
            for _ in range(4):
                accepted.append(await fake.accept())
        with anyio.move_on_after(0.5) as waited:
            await fake.accept()
        assert waited.cancelled_caught, "a fifth dial while four handshakes were under way"
        # One handshake done: the next dial follows at once.
        reader, writer = accepted[0]
        challenge = hs.Challenge.new(5)
        writer.write(challenge.line())
        with anyio.fail_after(5):
            hello = hs.parse_hello(await read_line(reader))
        writer.write(hs.ready_line(TOKEN, challenge, hello))
        with anyio.fail_after(5):
            await fake.accept()
        assert client.idle_count == 1


async def test_a_refused_round_stops_dialling_at_the_first_refusal(
    make_gateway: GatewayFactory,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pool 10 000 against the default limit of 1024: 8976 refusals in the first round, before.

    Now the round ends at its first failure: only the dials under way (at most
    DIAL_AT_ONCE) are refused with it.
    """
    monkeypatch.setattr(_client, "DIAL_AT_ONCE", 4)
    caplog.set_level(logging.INFO, logger="revgw")
    async with (
        make_gateway(max_conns_per_client=10) as gw,
        make_client(gw, pool=200, wait=False, max_backoff=0.5) as client,
    ):
        said = await logged(caplog, "client", "the gateway is busy")
        assert client.idle_count == 10
    # The refusals of the first round: those logged before the client said so.
    lines = [r.getMessage() for r in caplog.records]
    refused = [m for m in lines[: lines.index(said)] if "busy for" in m]
    assert 1 <= len(refused) <= 4


# --- what an idle pooled connection keeps --------------------------------------------------


async def test_an_idle_pooled_connection_keeps_no_handshake_state(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The CHALLENGE, the AUTH line sent and the wait for READY are done with at READY.

    Kept for the life of each pooled connection, they (and the link's attribute
    dict, now slots) were about 0.9 KiB of the 3.4 KiB an idle connection cost
    the client: 9 MiB for a pool of 10 000.
    """
    async with make_gateway() as gw, make_client(gw, pool=3) as client:
        (keeper,) = client.keepers
        assert len(keeper.links) == 3
        for link in keeper.links:
            kept = [type(value).__name__ for value in gc.get_referents(link)]
            for done_with in ("Challenge", "Hello", "Future"):
                assert done_with not in kept, kept
        # Still alive, answering PINGs: a request goes through one of them.
        response = await get(gw.address, "/ping")
        assert (response.status, response.body) == (200, b"pong")


async def test_an_idle_pooled_connection_has_no_timer_of_its_own(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """One sweep a second watches the whole pool for a silent gateway (tests/test_liveness.py).

    A timer per connection, made anew at every PING, cost each idle connection
    a handle, a context and a bound method (and a libuv timer under uvloop),
    and a pool of 10 000 two thousand timer re-arms a second.
    """
    async with make_gateway(heartbeat=0.2) as gw, make_client(gw, pool=3) as client:
        await anyio.sleep(0.5)  # a PING or two answered
        (keeper,) = client.keepers
        assert len(keeper.links) == 3
        for link in keeper.links:
            kept = [type(value).__name__ for value in gc.get_referents(link)]
            assert "TimerHandle" not in kept, kept
        assert client.idle_count == 3


async def test_the_gateway_says_refused_handshakes_once_a_second_with_a_count(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A burst of BUSY (or DENIED) answers is one line, then a count: no flood on the gateway."""
    caplog.set_level(logging.INFO, logger="revgw")
    async with (
        make_gateway(max_conns_per_client=5) as gw,
        make_client(gw, pool=50, wait=False, max_backoff=0.2) as client,
    ):
        await logged(caplog, "client", "the gateway is busy")
        for _ in range(100):  # watching the retries come (bounded), not waiting for readiness
            if gw.stats.handshakes["busy"] >= 60:  # the first round, then a few retries
                break
            await anyio.sleep(0.05)
        counted = await logged(caplog, "gateway", "more handshake(s) refused")
        assert client.idle_count == 5
    lines = [m for m in warnings_from(caplog, "gateway") if "busy for" in m]
    # The first refusal in full, then at most one line a second (the test lasts ~2 s).
    assert 2 <= len(lines) <= 4, lines
    assert lines[0].startswith("tunnel port: busy for 127.0.0.1:")
    assert "(--max-conns-per-client)" in lines[0]
    assert "the latest: busy for" in counted
