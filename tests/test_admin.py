"""The admin listener: health, readiness, metrics, JSON and the status page, never public."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ClientFactory, GatewayFactory
from helpers import Connection, get
from revgw import Client, Gateway
from revgw._errors import ConfigError
from revgw._metrics import Histogram
from revgw._settings import ClientSettings, GatewaySettings


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def api(address: str, path: str = "/api/tunnels") -> Any:
    response = await get(address, path)
    assert response.status == 200, response.text
    assert response.header("content-type") == "application/json"
    return json.loads(response.body)


async def until_status(address: str, path: str, status: int) -> str:
    """Poll an admin endpoint until it answers ``status`` (bounded: 5 s)."""
    with anyio.fail_after(5):
        while True:
            response = await get(address, path)
            if response.status == status:
                return response.text
            await anyio.sleep(0.02)


async def test_health_ready_and_unknown_paths(chain: Gateway) -> None:
    assert chain.admin is not None
    admin = chain.admin.address
    health = await get(admin, "/healthz")
    assert (health.status, health.text) == (200, "ok\n")
    ready = await get(admin, "/readyz")
    assert (ready.status, ready.text) == (200, "ready\n")
    missing = await get(admin, "/nope")
    assert missing.status == 404
    assert "/metrics" in missing.text  # says what exists
    conn = await Connection.open(admin)
    try:
        posted = await conn.request("POST", "/healthz", body=b"x" * 1000)
    finally:
        await conn.close()
    assert posted.status == 405
    assert posted.header("allow") == "GET, HEAD"
    head = await Connection.open(admin)
    try:
        answer = await head.request("HEAD", "/healthz")
    finally:
        await head.close()
    assert answer.status == 200 and answer.body == b""


async def test_garbage_gets_400(chain: Gateway) -> None:
    assert chain.admin is not None
    conn = await Connection.open(chain.admin.address)
    try:
        await conn.send(b"NOT HTTP AT ALL\r\n\r\n")
        response = await conn.read_response()
    finally:
        await conn.close()
    assert response.status == 400


async def test_api_tunnels_lists_clients_pool_and_counters(chain: Gateway) -> None:
    assert chain.admin is not None
    data = await api(chain.admin.address)
    assert data["gateway"]["address"] == chain.address
    assert data["gateway"]["clients_connected"] == 1
    assert data["gateway"]["handshakes"]["accepted"] >= 2
    (tunnel,) = data["tunnels"]
    assert tunnel["name"] == "default" and tunnel["online"] is True
    (client,) = tunnel["clients"]
    assert client["address"].startswith("127.0.0.1:")
    assert client["connections"] == 2 and client["since"] > 0
    assert tunnel["pool"] == {"live": 2, "idle": 2, "busy": 0, "warm": 0, "waiting": 0}
    assert tunnel["counters"]["requests"] == 0

    for _ in range(3):
        assert (await get(chain.address, "/ping")).status == 200
    counters = (await api(chain.admin.address))["tunnels"][0]["counters"]
    assert counters["requests"] == 3 and counters["by_status"] == {"200": 3}
    assert counters["bytes_out"] > 0


async def test_metrics_change_after_requests(chain: Gateway) -> None:
    assert chain.admin is not None
    admin = chain.admin.address
    response = await get(admin, "/metrics")
    assert response.status == 200
    assert (response.header("content-type") or "").startswith("text/plain")
    before = samples(response.text)
    tunnel = (("tunnel", "default"),)
    assert before[("revgw_pool_idle", tunnel)] == 2
    assert before[("revgw_clients_connected", tunnel)] == 1
    assert before[("revgw_tunnel_online", tunnel)] == 1
    assert before[("revgw_handshakes_total", (("result", "accepted"),))] >= 2
    assert ("revgw_requests_total", (("status", "200"), *tunnel)) not in before

    for _ in range(3):
        assert (await get(chain.address, "/ping")).status == 200
    conn = await Connection.open(chain.address)
    try:
        assert (await conn.request("POST", "/echo", body=b"y" * 500)).status == 200
    finally:
        await conn.close()
    after = samples((await get(admin, "/metrics")).text)
    assert after[("revgw_requests_total", (("status", "200"), *tunnel))] == 4
    assert after[("revgw_bytes_in_total", tunnel)] == 500
    assert after[("revgw_bytes_out_total", tunnel)] > 500
    assert after[("revgw_request_wait_seconds_count", tunnel)] == 4
    assert after[("revgw_upstream_latency_seconds_count", tunnel)] == 4
    assert after[("revgw_upstream_latency_seconds_sum", tunnel)] > 0
    assert after[("revgw_upstream_latency_seconds_bucket", (("le", "+Inf"), *tunnel))] == 4


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    """Prometheus ``le``: a value equal to a bucket's bound counts in that bucket."""
    histogram = Histogram()
    for value in (0.0, 0.0005, 0.001, 0.0011, 0.25, 60.0, 61.0):
        histogram.observe(value)
    cumulative = dict(histogram.cumulative())
    assert cumulative["0.001"] == 3
    assert cumulative["0.0025"] == 4
    assert cumulative["0.25"] == 5
    assert cumulative["60.0"] == 6
    assert cumulative["+Inf"] == 7
    assert histogram.sum == pytest.approx(121.2526)


async def test_requests_the_gateway_answers_itself_are_counted(
    make_gateway: GatewayFactory,
) -> None:
    async with make_gateway(default_tunnel="") as gw:
        assert (await get(gw.address, "/")).status == 404  # no tunnel serves the host
        metrics = samples((await get(gw.admin.address, "/metrics")).text)
    assert metrics[("revgw_requests_total", (("status", "404"), ("tunnel", "-")))] == 1


async def test_denied_handshakes_are_counted(chain: Gateway, make_client: ClientFactory) -> None:
    assert chain.admin is not None
    with pytest.raises(Exception, match="token"):
        async with make_client(chain, token="wrong-token-0123456789"):
            pass
    data = await api(chain.admin.address)
    assert data["gateway"]["handshakes"]["denied"] >= 1


async def test_readyz_waits_for_the_needed_tunnel(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with make_gateway(ready_needs_tunnel="default") as gw:
        assert gw.admin is not None
        admin = gw.admin.address
        response = await get(admin, "/readyz")
        assert response.status == 503
        assert "tunnel 'default' is offline" in response.text
        async with make_client(gw):
            assert (await get(admin, "/readyz")).status == 200
        await until_status(admin, "/readyz", 503)


class Cells(HTMLParser):
    """The numbers a status page shows: {(tunnel, JSON path): text}."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], str] = {}
        self._open: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "td" and "data-field" in found:
            self._open = (found["data-tunnel"] or "", found["data-field"] or "")
            self.cells[self._open] = ""

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.cells[self._open] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._open = None


def shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(len(value)) if isinstance(value, list) else str(value)


async def test_status_page_shows_the_numbers_of_the_json(chain: Gateway) -> None:
    assert chain.admin is not None
    admin = chain.admin.address
    for _ in range(2):
        assert (await get(chain.address, "/ping")).status == 200
    page = await get(admin, "/")
    data = await api(admin)
    assert page.status == 200
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert 'fetch("/api/tunnels"' in page.text and "setInterval(refresh, 1000)" in page.text
    parser = Cells()
    parser.feed(page.text)
    columns = json.loads(re.search(r"const COLUMNS = (\[.*?\]);", page.text).group(1))  # type: ignore[union-attr]
    assert len(parser.cells) == len(columns) * len(data["tunnels"]) > 0
    for tunnel in data["tunnels"]:
        for path in columns:
            value: Any = tunnel
            for key in path.split("."):
                value = value[key]  # a path the script reads must exist in the JSON
            assert parser.cells[(tunnel["name"], path)] == shown(value), path
    assert parser.cells[("default", "counters.requests")] == "2"
    assert parser.cells[("default", "pool.idle")] == str(data["tunnels"][0]["pool"]["idle"])


async def test_admin_is_never_on_the_public_port(make_gateway: GatewayFactory) -> None:
    async with make_gateway() as gw:
        assert gw.admin is not None and gw.admin.address not in (gw.address, gw.tunnel_address)
        for path in ("/healthz", "/metrics", "/api/tunnels"):
            response = await get(gw.address, path)
            assert response.status == 503  # routed to the (offline) tunnel like any request
            assert response.header("x-revgw-error") == "tunnel-offline"


async def test_admin_off(make_gateway: GatewayFactory) -> None:
    async with make_gateway(admin="off") as gw:
        assert gw.admin is None
        assert (await get(gw.address, "/ping")).status == 503


async def test_admin_settings_are_checked(make_gateway: GatewayFactory) -> None:
    with pytest.raises(ConfigError, match="--admin"):
        GatewaySettings(admin="nonsense")
    with pytest.raises(ConfigError, match="--admin"):
        ClientSettings(token="x", admin="nonsense")
    assert ClientSettings(token="x").admin == "off"
    assert GatewaySettings().admin == "127.0.0.1:9002"
    async with make_gateway() as gw:
        assert gw.admin is not None
        with pytest.raises(ConfigError, match=r"cannot listen on .* \(--admin\)"):
            async with make_gateway(admin=gw.admin.address):
                pass


async def test_client_admin(make_gateway: GatewayFactory, make_client: ClientFactory) -> None:
    async with make_gateway() as gw, make_client(gw, admin="127.0.0.1:0") as client:
        assert client.admin is not None
        admin = client.admin.address
        assert (await get(admin, "/healthz")).status == 200
        assert (await get(admin, "/readyz")).status == 200
        status = await api(admin, "/api/status")
        assert status["pool"] == {"size": 2, "idle": 2, "paired": 0}
        assert status["dials"] >= 2 and status["dial_failures"] == 0 and status["backoff"] == 0
        metrics = samples((await get(admin, "/metrics")).text)
        assert metrics[("revgw_client_pool_idle", ())] == 2
        assert metrics[("revgw_client_dials_total", ())] >= 2
        assert (await get(admin, "/api/tunnels")).status == 404  # a gateway endpoint


async def test_client_admin_not_ready_while_the_gateway_is_away(server: Any) -> None:
    async with Gateway(listen="127.0.0.1:0", tunnel_listen="127.0.0.1:0", admin="off") as gw:
        gone = gw.tunnel_address  # closed on exit: nobody listens there any more
    async with Client(
        gateway=gone, target=server.address, token="t" * 20, admin="127.0.0.1:0", max_backoff=0.2
    ) as client:
        assert client.admin is not None
        admin = client.admin.address
        assert "no idle connection" in await until_status(admin, "/readyz", 503)
        with anyio.fail_after(5):
            while True:  # the keeper's retries, seen from outside
                if (await api(admin, "/api/status"))["dial_failures"] >= 2:
                    break
                await anyio.sleep(0.02)
        metrics = samples((await get(admin, "/metrics")).text)
        assert metrics[("revgw_client_dial_failures_total", ())] >= 2
        assert metrics[("revgw_client_backoff_seconds", ())] > 0


PROMETHEUS_LAZY = """
import asyncio, sys
import revgw

async def get(address, path):
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET %s HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n" % path.encode())
    answer = await reader.read()
    writer.close()
    return answer

async def main():
    token = "t" * 32
    async with revgw.Gateway(
        listen="127.0.0.1:0", tunnel_listen="127.0.0.1:0", admin="127.0.0.1:0", token=token
    ) as gw, revgw.Client(
        gateway=gw.tunnel_address, target="127.0.0.1:9", token=token, pool=1, admin="127.0.0.1:0"
    ) as client:
        await client.wait_ready()
        await get(gw.admin.address, "/api/tunnels")
        await get(client.admin.address, "/api/status")
        print("before a scrape:", "prometheus_client" in sys.modules)
        gateway = await get(gw.admin.address, "/metrics")
        client = await get(client.admin.address, "/metrics")
        print("after a scrape:", "prometheus_client" in sys.modules)
        print("metrics:", b"revgw_pool_idle" in gateway, b"revgw_client_pool_size" in client)

asyncio.run(main())
"""


async def test_prometheus_client_is_loaded_at_the_first_scrape() -> None:
    """A gateway or client never scraped does not pay prometheus_client's ~5 MiB."""
    process = await anyio.run_process([sys.executable, "-c", PROMETHEUS_LAZY], check=False)
    assert process.returncode == 0, process.stderr.decode()
    assert process.stdout.decode().splitlines() == [
        "before a scrape: False",
        "after a scrape: True",
        "metrics: True True",
    ]
