"""Routing by Host, and sharing one tunnel between clients.

Each private server here answers with its own name, so a test can tell
which server (and so which client and tunnel) a request reached.
"""

from __future__ import annotations

import logging

import anyio
import pytest
from anyio.abc import SocketStream, TaskStatus

from conftest import ClientFactory, GatewayFactory
from helpers import Connection, get
from revgw import AccessDenied
from test_errors import assert_error, serve_requests, tcp_server, wait_until


class Arrivals:
    """Requests that reached any of a test's servers, and the gate held ones wait at."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.release = anyio.Event()
        self._changed = anyio.Event()

    def add(self, request_line: bytes) -> None:
        self.lines.append(request_line)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        """Return once ``count`` requests arrived: each is then paired end to end."""
        with anyio.fail_after(5):
            while len(self.lines) < count:
                await self._changed.wait()


class NamedServer:
    """A private server answering every request with its name; ``/hold`` waits for release."""

    def __init__(self, name: str, arrivals: Arrivals) -> None:
        self.name = name
        self.arrivals = arrivals
        self.count = 0

    async def answer(self, request_line: bytes) -> bytes:
        self.count += 1
        self.arrivals.add(request_line)
        if b" /hold" in request_line:
            await self.arrivals.release.wait()
        body = self.name.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def handle(self, stream: SocketStream) -> None:
        await serve_requests(stream, self.answer)


def named_servers(*names: str) -> tuple[Arrivals, list[NamedServer]]:
    arrivals = Arrivals()
    return arrivals, [NamedServer(name, arrivals) for name in names]


async def fetch(address: str, target: str, host: str, into: list[str]) -> None:
    response = await get(address, target, host=host)
    assert response.status == 200, response
    into.append(response.text)


async def test_each_host_reaches_only_its_own_tunnel_and_server(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    _, (server_a, server_b) = named_servers("A", "B")
    async with (
        tcp_server(server_a.handle) as address_a,
        tcp_server(server_b.handle) as address_b,
        make_gateway(default_tunnel="") as gw,
        make_client(gw, target=address_a, tunnel="alpha", host=("a.test",), client_id="a"),
        make_client(gw, target=address_b, tunnel="beta", host=("b.test",), client_id="b"),
    ):
        for host, name in [("a.test", "A"), ("b.test", "B")] * 3:
            assert (await get(gw.address, "/", host=host)).text == name
        # the port and the letter case do not matter
        assert (await get(gw.address, "/", host="a.test:9000")).text == "A"
        assert (await get(gw.address, "/", host="B.Test:8080")).text == "B"
        # one keep-alive caller connection: every request is routed by its own Host
        conn = await Connection.open(gw.address)
        answers = [(await conn.request("GET", "/", host=h)).text for h in ["a.test", "b.test"] * 2]
        await conn.close()
        assert answers == ["A", "B", "A", "B"]
        # a Host nobody claimed goes nowhere (no default tunnel here)
        response = await get(gw.address, "/", host="c.test")
        assert_error(response, 404, "no-tunnel", "c.test")
        assert (server_a.count, server_b.count) == (6, 6)


async def test_two_clients_of_one_tunnel_share_its_requests_and_survive_each_other(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    arrivals, (server_a, server_b) = named_servers("A", "B")
    stop_a = anyio.Event()

    async def run_client_a(*, task_status: TaskStatus[None]) -> None:
        # in a task of its own, so that it can stop while client-b goes on
        async with make_client(gw, target=address_a, client_id="client-a", pool=2):
            task_status.started()
            await stop_a.wait()

    async with (
        tcp_server(server_a.handle) as address_a,
        tcp_server(server_b.handle) as address_b,
        make_gateway(heartbeat=30) as gw,
        anyio.create_task_group() as clients,
    ):
        tunnel = gw.registry.tunnels["default"]
        await clients.start(run_client_a)
        async with make_client(gw, target=address_b, client_id="client-b", pool=2):
            assert tunnel.clients == {"client-a": 2, "client-b": 2}
            # four requests held at the servers at once: idle connections go oldest
            # first, so they take both of client-a's and both of client-b's
            names: list[str] = []
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(fetch, gw.address, "/hold", "x.test", names)
                await arrivals.wait_for(4)
                arrivals.release.set()
            assert sorted(names) == ["A", "A", "B", "B"]

            stop_a.set()  # client-a goes away
            # the gateway notices its connections close
            await wait_until(lambda: "client-a" not in tunnel.clients)
            names.clear()
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(fetch, gw.address, "/", "x.test", names)
            assert names == ["B"] * 10
            assert server_a.count == 2


async def test_claiming_a_host_another_live_tunnel_serves_is_denied(
    make_gateway: GatewayFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="revgw")
    async with (
        make_gateway() as gw,
        make_client(gw, tunnel="alpha", host=("a.test",), client_id="first"),
    ):
        with anyio.fail_after(5), pytest.raises(AccessDenied) as info:
            async with make_client(
                gw, wait=False, tunnel="beta", host=("a.test",), client_id="second"
            ):
                await anyio.sleep_forever()
        assert "host a.test is already served by tunnel 'alpha'" in str(info.value)
        denied = [r.getMessage() for r in caplog.records if "denied" in r.getMessage()]
        assert denied and all("a.test" in line for line in denied)
        # the first claim stands
        assert (await get(gw.address, "/ping", host="a.test")).body == b"pong"
        assert "beta" not in gw.registry.tunnels or not gw.registry.tunnels["beta"].online


async def test_a_host_moves_to_a_new_tunnel_once_its_old_tunnel_is_offline(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    _, (server_a, server_b) = named_servers("A", "B")
    async with (
        tcp_server(server_a.handle) as address_a,
        tcp_server(server_b.handle) as address_b,
        make_gateway(default_tunnel="") as gw,
    ):
        async with make_client(gw, target=address_a, tunnel="old", host=("app.test",)):
            assert (await get(gw.address, "/", host="app.test")).text == "A"
        # the gateway notices the client left
        await wait_until(lambda: not gw.registry.tunnels["old"].online)
        response = await get(gw.address, "/", host="app.test")
        assert_error(response, 503, "tunnel-offline", "tunnel 'old' is offline")
        async with make_client(gw, target=address_b, tunnel="new", host=("app.test",)):
            assert (await get(gw.address, "/", host="app.test")).text == "B"
