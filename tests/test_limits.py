"""The gateway's limits (issue 5, item 3): each one bites with a clear answer and one log line.

Pooled connections per client and per tunnel (``REVGW/1 BUSY``, and the
client backs off instead of stopping), concurrent public connections (503
too-many-connections), silent tunnel connections holding no slot, failed
authentications per source address (refused for a growing while), and the
request body size (413 body-too-large).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time

import anyio
import pytest

from conftest import TOKEN, ClientFactory, GatewayFactory
from helpers import Connection, fake_client, read_line, split
from revgw import AccessDenied, ConfigError, GatewayBusy, GatewaySettings, ProtocolError
from revgw import _handshake as hs
from revgw._limits import MAX_BLOCK, AuthFailures, BurstLog


def gateway_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "revgw.gateway" and r.levelno >= logging.WARNING
    ]


async def handshake(
    address: str, token: str = TOKEN, client_id: str = "c1", tunnel: str = "default"
) -> bytes:
    """One raw handshake; the gateway's last line (READY, DENIED or BUSY), connection closed."""
    reader, writer = await asyncio.open_connection(*split(address))
    try:
        with anyio.fail_after(5):
            first = await read_line(reader)
            if not first.startswith(b"REVGW/1 CHALLENGE"):
                return first
            challenge = hs.parse_challenge(first)
            writer.write(hs.make_hello(token, challenge, tunnel, client_id, ()).line())
            return await read_line(reader)
    finally:
        writer.close()


async def until(condition: object, what: str) -> None:
    """Poll a condition the gateway reaches on its own (a bounded loop, not a sleep)."""
    with anyio.fail_after(5):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110 - gateway-side state, no event
            await anyio.sleep(0.01)


# --- sans-IO: the wire and the bookkeeping -------------------------------------------------


def test_busy_is_retryable_and_distinct_from_denied() -> None:
    challenge = hs.Challenge("ab" * 16, 5.0)
    hello = hs.make_hello(TOKEN, challenge, "default", "c", ())
    line = hs.busy_line("client c already holds 2 connections")
    assert line == b"REVGW/1 BUSY client c already holds 2 connections\r\n"
    with pytest.raises(GatewayBusy, match="busy: client c already holds 2") as caught:
        hs.check_verdict(TOKEN, challenge, hello, line[:-2])
    assert isinstance(caught.value, ProtocolError)
    assert not isinstance(caught.value, AccessDenied)
    # BUSY may also come instead of the CHALLENGE.
    with pytest.raises(GatewayBusy, match="retry in 4 s"):
        hs.parse_challenge(b"REVGW/1 BUSY too many failed attempts from 10.0.0.1; retry in 4 s")
    with pytest.raises(AccessDenied):
        hs.check_verdict(TOKEN, challenge, hello, b"REVGW/1 DENIED unknown token")


def test_auth_failures_block_after_the_limit_and_double() -> None:
    failures = AuthFailures(limit=3, window=60)
    assert failures.failed("a", 0) == 0
    assert failures.failed("a", 1) == 0
    assert failures.blocked_for("a", 1) == 0
    assert failures.failed("a", 2) == 1  # the third: blocked 1 s
    assert failures.blocked_for("a", 2.5) == 0.5
    assert failures.blocked_for("a", 3) == 0
    assert failures.blocked_for("b", 2.5) == 0  # other addresses are not touched
    assert failures.failed("a", 3) == 2
    assert failures.failed("a", 5) == 4
    for now in range(6, 30):
        block = failures.failed("a", now * 10)
    assert block == MAX_BLOCK
    # A quiet window after the block ends forgets the address.
    later = 290 + MAX_BLOCK + 61
    assert failures.failed("a", later) == 0


def test_auth_failures_memory_is_bounded() -> None:
    failures = AuthFailures(limit=1, window=60, max_tracked=3)
    for n in range(5):
        failures.failed(f"10.0.0.{n}", 0)
    assert len(failures) == 3
    assert failures.blocked_for("10.0.0.0", 0.5) == 0  # the oldest were dropped
    assert failures.blocked_for("10.0.0.4", 0.5) == 0.5


def test_burst_log_says_once_per_interval_with_a_count() -> None:
    burst = BurstLog(interval=1.0)
    assert burst.note(10.0) == 1
    assert [burst.note(10.0 + i / 100) for i in range(1, 50)] == [0] * 49
    assert burst.flush(10.5) == 0
    assert burst.flush(11.0) == 49
    assert burst.flush(12.5) == 0


@pytest.mark.parametrize(
    "field",
    [
        "max_body_bytes",
        "max_callers",
        "max_conns_per_client",
        "max_conns_per_tunnel",
        "max_auth_failures",
    ],
)
def test_limits_must_be_positive(field: str) -> None:
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError, match=f"{flag} must be 1 or more, not 0"):
        GatewaySettings(**{field: 0})


# --- pooled connections per client and per tunnel ------------------------------------------


async def test_connections_per_client_beyond_the_limit_are_told_busy(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_gateway(max_conns_per_client=2) as gw:
        held = [await fake_client(gw, "alpha"), await fake_client(gw, "alpha")]
        try:
            verdict = await handshake(gw.tunnel_address, client_id="alpha")
            assert verdict == (
                b"REVGW/1 BUSY client alpha already holds 2 connections "
                b"(--max-conns-per-client); retry later or lower --pool"
            )
            assert len(gw.registry.tunnel("default").live) == 2  # the refused one never joined
            assert (await handshake(gw.tunnel_address, client_id="beta")).startswith(
                b"REVGW/1 READY"
            )
        finally:
            for _, writer in held:
                writer.close()
    assert any("busy for" in m and "--max-conns-per-client" in m for m in gateway_warnings(caplog))


async def test_connections_per_tunnel_beyond_the_limit_are_told_busy(
    make_gateway: GatewayFactory,
) -> None:
    async with make_gateway(max_conns_per_tunnel=2) as gw:
        held = [await fake_client(gw, "a"), await fake_client(gw, "b")]
        try:
            verdict = await handshake(gw.tunnel_address, client_id="c")
            assert verdict.startswith(b"REVGW/1 BUSY tunnel 'default' already holds 2 connections")
            assert (await handshake(gw.tunnel_address, tunnel="other")).startswith(b"REVGW/1 READY")
        finally:
            for _, writer in held:
                writer.close()


async def test_a_busy_client_backs_off_instead_of_stopping(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with (
        make_gateway(max_conns_per_client=2) as gw,
        make_client(gw, pool=3, wait=False) as client,
    ):
        await client.wait_ready(2)

        def told_busy() -> bool:
            return any(
                r.name == "revgw.client"
                and "the gateway is busy" in r.getMessage()
                and "retrying in" in r.getMessage()
                for r in caplog.records
            )

        await until(told_busy, "the client logs the BUSY and retries")
        assert client.idle_count == 2  # still serving: it did not stop as on DENIED


# --- concurrent public connections ----------------------------------------------------------


async def test_callers_beyond_the_limit_get_503_and_one_log_line(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_gateway(max_callers=2) as gw, make_client(gw):
        first = await Connection.open(gw.address)
        second = await Connection.open(gw.address)
        await until(lambda: len(gw.callers) == 2, "both callers are counted")
        refused = []
        for _ in range(5):
            conn = await Connection.open(gw.address)
            refused.append(conn)
            response = await conn.request()
            assert response.status == 503
            assert response.header("X-Revgw-Error") == "too-many-connections"
            assert response.header("Retry-After") == "1"
            assert response.header("Connection") == "close"
            assert "limit of 2 open connections" in response.text
        for conn in refused:
            await conn.close()
        lines = [m for m in gateway_warnings(caplog) if "--max-callers 2 reached" in m]
        assert lines == ["public port: refused 1 connection(s): --max-callers 2 reached"]
        await first.close()
        await until(lambda: len(gw.callers) == 1, "a slot is free again")
        assert (await second.request()).status == 200
        third = await Connection.open(gw.address)
        assert (await third.request()).status == 200
        await third.close()
        await second.close()


# --- handshake time: silent connections hold no slot -----------------------------------------


SILENT = 500


def _room_for(sockets: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * sockets + 256  # both ends live in this process
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {wanted} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def test_silent_connections_do_not_delay_a_real_handshake(
    make_gateway: GatewayFactory,
) -> None:
    _room_for(SILENT)
    async with make_gateway(max_conns_per_client=1, max_conns_per_tunnel=1) as gw:
        silent = []
        try:
            with anyio.fail_after(10):
                for _ in range(SILENT):
                    silent.append(await asyncio.open_connection(*split(gw.tunnel_address)))
            await until(lambda: len(gw.tunnel_conns) >= SILENT, "all silent ones accepted")
            started = time.monotonic()
            verdict = await handshake(gw.tunnel_address, client_id="real")
            elapsed = time.monotonic() - started
            # READY despite limits of 1: silent connections have no identity, hold no slot.
            assert verdict.startswith(b"REVGW/1 READY")
            assert elapsed < 1.0, f"the handshake took {elapsed:.2f} s"
        finally:
            for _, writer in silent:
                writer.close()


# --- failed authentications per source address ------------------------------------------------


async def test_an_address_failing_too_often_is_refused_at_once(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_gateway(max_auth_failures=3) as gw:
        for _ in range(3):
            verdict = await handshake(gw.tunnel_address, token="wrong-token-000")
            assert verdict == b"REVGW/1 DENIED unknown token"
        # Refused before the CHALLENGE, whatever token it would have shown.
        refusal = await handshake(gw.tunnel_address)
        assert refusal == b"REVGW/1 BUSY too many failed attempts from 127.0.0.1; retry in 1 s"
        with pytest.raises(GatewayBusy, match="too many failed attempts"):
            hs.parse_challenge(refusal)
        assert (await handshake(gw.tunnel_address)).startswith(b"REVGW/1 BUSY")
    blocked = [m for m in gateway_warnings(caplog) if "failed to authenticate too often" in m]
    assert blocked == [
        "tunnel port: 127.0.0.1 failed to authenticate too often (--max-auth-failures 3);"
        " refusing it for 1 s"
    ]


# --- request body size ------------------------------------------------------------------------


async def test_a_content_length_over_the_limit_gets_413_before_any_client(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with make_gateway(max_body_bytes=1000) as gw, make_client(gw):
        tunnel = gw.registry.tunnel("default")
        conn = await Connection.open(gw.address)
        try:
            await conn.send(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n" + b"x" * 500
            )
            response = await conn.read_response()
        finally:
            await conn.close()
        assert response.status == 413
        assert response.header("X-Revgw-Error") == "body-too-large"
        assert response.header("Connection") == "close"
        assert "1001 bytes" in response.text and "--max-body-bytes" in response.text
        assert tunnel.idle_count == 2  # no tunnel connection was used
        # At the limit exactly, it passes.
        ok = await Connection.open(gw.address)
        try:
            echoed = await ok.request("POST", "/echo", body=b"y" * 1000)
        finally:
            await ok.close()
        assert echoed.status == 200 and echoed.body == b"y" * 1000


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_a_chunked_body_growing_over_the_limit_gets_413_and_the_tunnel_conn_closes(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_gateway(max_body_bytes=1000) as gw, make_client(gw):
        conn = await Connection.open(gw.address)
        try:
            # /ping reads the whole body before it answers: nothing reaches the caller first.
            await conn.send(
                b"POST /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunk(b"a" * 600)
            )
            await until(lambda: any(c.exchange for c in gw.callers), "paired")
            await conn.send(chunk(b"b" * 600))
            response = await conn.read_response()
        finally:
            await conn.close()
        assert response.status == 413
        assert response.header("X-Revgw-Error") == "body-too-large"
        assert response.header("Connection") == "close"
        assert gw.registry.tunnel("default").warm_count == 0  # truncated: never reused
    assert any("413" in m and "grew past" in m for m in gateway_warnings(caplog))


async def test_a_chunked_body_over_the_limit_after_the_answer_began_cuts_the_caller_off(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_gateway(max_body_bytes=1000) as gw, make_client(gw):
        reader, writer = await asyncio.open_connection(*split(gw.address))
        try:
            writer.write(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunk(b"a" * 600)
            )
            with anyio.fail_after(5):
                received = await reader.readuntil(b"\r\n\r\n")
                assert received.startswith(b"HTTP/1.1 200")
                writer.write(chunk(b"b" * 600))
                rest = b""
                try:
                    while piece := await reader.read(65536):
                        rest += piece
                except ConnectionResetError:
                    pass
        finally:
            writer.close()
        assert not rest.endswith(b"0\r\n\r\n")  # the caller sees a broken response, not an end
        assert gw.registry.tunnel("default").warm_count == 0
    assert any("response cut short" in m and "grew past" in m for m in gateway_warnings(caplog))
