"""Several gateways: a client keeps a pool at each, HAProxy in front picks a ready one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import TOKEN, GatewayFactory
from helpers import free_port, get
from revgw import Client, ClientSettings
from revgw._client import resolve_gateways
from revgw._errors import ConfigError
from revgw_examples.server import Server

ROOT = Path(__file__).resolve().parent.parent
HAPROXY = shutil.which("haproxy")


def test_a_plain_string_gateway_is_one_gateway() -> None:
    settings = ClientSettings(gateway="127.0.0.1:9001", token=TOKEN)  # type: ignore[arg-type]
    assert settings.gateway == ("127.0.0.1:9001",)
    both = ClientSettings(gateway=("127.0.0.1:1", " 127.0.0.1:2", "127.0.0.1:1"), token=TOKEN)
    assert both.gateway == ("127.0.0.1:1", "127.0.0.1:2")
    with pytest.raises(ConfigError, match="--gateway: give at least one"):
        ClientSettings(gateway=(), token=TOKEN)
    with pytest.raises(ConfigError, match="--gateway: 'nope' is not host:port"):
        ClientSettings(gateway=("127.0.0.1:1", "nope"), token=TOKEN)


async def test_a_name_with_one_address_per_family_is_one_gateway() -> None:
    """``localhost`` (127.0.0.1 and ::1) is one host: dialled by name, not twice."""
    resolved = await resolve_gateways(("localhost:9001", "127.0.0.1:9002"))
    assert [(str(a), host) for a, host in resolved] == [
        ("localhost:9001", None),
        ("127.0.0.1:9002", None),
    ]


async def test_a_client_keeps_a_pool_at_every_gateway(
    make_gateway: GatewayFactory, server: Server
) -> None:
    async with make_gateway() as one, make_gateway() as two:
        gateways = (one.tunnel_address, two.tunnel_address)
        async with Client(
            gateway=gateways, target=server.address, token=TOKEN, pool=2, admin="127.0.0.1:0"
        ) as client:
            await client.wait_ready()
            assert [k.idle_count for k in client.keepers] == [2, 2]
            for gw in (one, two):
                assert (await get(gw.address)).status == 200
            assert client.admin is not None
            status = json.loads((await get(client.admin.address, "/api/status")).text)
            assert [(g["address"], g["idle"]) for g in status["gateways"]] == [
                (one.tunnel_address, 2),
                (two.tunnel_address, 2),
            ]
            assert status["pool"]["idle"] == 4


# --- the real thing: processes, HAProxy, signals ----------------------------------------------


class GatewayProcess:
    """``revgw gateway`` on fixed loopback ports, so that it can be restarted on them."""

    def __init__(self) -> None:
        self.public, self.tunnel, self.admin = free_port(), free_port(), free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def tunnel_address(self) -> str:
        return f"127.0.0.1:{self.tunnel}"

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REVGW_")}
        self.process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "revgw", "gateway", "--token", TOKEN, "--grace", "5"),
            *("--listen", f"127.0.0.1:{self.public}", "--tunnel-listen", self.tunnel_address),
            *("--admin", f"127.0.0.1:{self.admin}"),
            # not ready (for HAProxy) until a client has dialled in: no 503 after a restart
            *("--ready-needs-tunnel", "default"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        for _ in range(200):  # a process: nothing to await but its port (<= 10 s)
            try:
                if (await get(f"127.0.0.1:{self.admin}", "/healthz")).status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"gateway on {self.public} never started")

    async def stop(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        await asyncio.wait_for(self.process.wait(), 10)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def aclose(self) -> None:
        self.kill()
        if self.process is not None:
            await self.process.wait()


def haproxy_config(public: int, gateways: list[GatewayProcess]) -> str:
    """deploy/haproxy.cfg with this test's ports and a fast health check."""
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    text = re.sub(r"(?m)^\s*(log stdout|maxconn).*\n", "", text)
    text = re.sub(r"(?m)^(\s*bind ).*$", rf"\g<1>127.0.0.1:{public}", text)
    text = re.sub(r"(?m)^\s*server .*\n", "", text)
    text = re.sub(r"(?m)^(\s*default-server ).*$", r"\g<1>inter 200ms fall 1 rise 1", text)
    servers = "".join(
        f"    server gw{i} 127.0.0.1:{gw.public} check port {gw.admin}\n"
        for i, gw in enumerate(gateways)
    )
    return text.rstrip("\n") + "\n" + servers


@asynccontextmanager
async def haproxy(config: str, tmp_path: Path) -> AsyncIterator[None]:
    assert HAPROXY is not None
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    process = await asyncio.create_subprocess_exec(
        HAPROXY, "-db", "-f", str(path), stdin=asyncio.subprocess.DEVNULL
    )
    try:
        yield
    finally:
        process.kill()
        await process.wait()


class Load:
    """A GET /ping every 20 ms through HAProxy, each on a fresh connection."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.results: list[tuple[float, int | str]] = []  # (when, status or error)
        self.tasks: set[asyncio.Task[None]] = set()

    async def one(self) -> None:
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(get(self.address), 5)
            status: int | str = response.status
            if status != 200:
                status = f"{status} {response.header('x-revgw-error')}"
        except Exception as exc:  # what a caller would see: reset, refused, cut short
            status = type(exc).__name__
        self.results.append((started, status))

    async def run(self) -> None:
        while True:
            task = asyncio.create_task(self.one())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(0.02)

    def failures(self, since: float = 0.0, until: float = float("inf")) -> list[Any]:
        return [(t, s) for t, s in self.results if since <= t < until and s != 200]


@pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not on PATH (apt-get install haproxy; .ci/run does)"
)
async def test_gateways_behind_haproxy_survive_a_drain_and_a_kill(
    server: Server, tmp_path: Path
) -> None:
    one, two = GatewayProcess(), GatewayProcess()
    public = free_port()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(one.aclose)
        stack.push_async_callback(two.aclose)
        await one.start()
        await two.start()
        await stack.enter_async_context(haproxy(haproxy_config(public, [one, two]), tmp_path))
        clients = [
            await stack.enter_async_context(
                Client(
                    gateway=(one.tunnel_address, two.tunnel_address),
                    target=server.address,
                    token=TOKEN,
                    pool=2,
                    max_backoff=0.3,
                    client_id=f"c{i}",
                )
            )
            for i in range(2)
        ]
        for client in clients:
            await asyncio.wait_for(client.wait_ready(), 10)
        address = f"127.0.0.1:{public}"
        for _ in range(100):  # HAProxy's first health checks (bounded, <= 5 s)
            try:
                if (await get(address)).status == 200:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.05)

        load = Load(address)
        runner = asyncio.create_task(load.run())
        try:
            await asyncio.sleep(1)
            await one.stop(signal.SIGTERM)  # drains: /readyz 503, port closed
            await asyncio.sleep(0.5)
            await one.start()  # same ports; the clients re-dial by themselves
            for client in clients:  # every gateway's pool full again
                await asyncio.wait_for(client.wait_ready(), 10)
            await asyncio.sleep(1)  # HAProxy marks it up again (rise 1, inter 200 ms)
            killed = time.monotonic()
            two.kill()  # SIGKILL: no drain, no 503 first
            await asyncio.sleep(2.5)
        finally:
            runner.cancel()
            await asyncio.gather(*list(load.tasks), return_exceptions=True)

        assert len(load.results) > 150
        # A request still in flight when gateway two is killed may fail with it (one
        # started 0.7 ms before the kill did, in a loop of runs). A request takes about
        # a millisecond here: one started 0.1 s before the kill has ended unless it
        # hangs, and a hang still counts against the drain.
        in_flight_at_kill = 0.1
        drain_failures = load.failures(until=killed - in_flight_at_kill)
        assert drain_failures == [], "a drain must not fail any request"
        late = load.failures(since=killed + 2.0)
        assert late == [], f"requests still failing 2 s after the kill: {late}"
        tail = [s for t, s in load.results if t >= killed + 2.0]
        assert tail and all(s == 200 for s in tail)
