"""The admin listener's ``/metrics``: the counters of _metrics.py as Prometheus families.

Imported at the first scrape, not before: prometheus_client costs each
process about 2 MiB of RSS (measured here: 1.6 MiB importing it and scraping
once; peak RSS of the benchmark's gateway + client fell 5 MiB), which a
gateway or client that is never scraped does not pay. Each gateway and
client has its own CollectorRegistry, so several of them in one process (the
tests, ``revgw demo``) never collide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._gateway import Gateway
from ._metrics import NO_TUNNEL, client_status, tunnels_snapshot

if TYPE_CHECKING:
    from ._client import Client


class _GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        snapshot = tunnels_snapshot(self.gateway)
        stats = self.gateway.stats
        requests = CounterMetricFamily(
            "revgw_requests", "Requests answered, by tunnel and status", labels=["tunnel", "status"]
        )
        bytes_in = CounterMetricFamily(
            "revgw_bytes_in", "Request body bytes from callers", labels=["tunnel"]
        )
        bytes_out = CounterMetricFamily(
            "revgw_bytes_out", "Response bytes to callers", labels=["tunnel"]
        )
        wait = HistogramMetricFamily(
            "revgw_request_wait_seconds",
            "Time a request waited for a tunnel connection",
            labels=["tunnel"],
        )
        upstream = HistogramMetricFamily(
            "revgw_upstream_latency_seconds",
            "Time from pairing to the end of the response",
            labels=["tunnel"],
        )
        online = GaugeMetricFamily(
            "revgw_tunnel_online", "1 if a client serves it", labels=["tunnel"]
        )
        clients = GaugeMetricFamily(
            "revgw_clients_connected", "Clients connected, by tunnel", labels=["tunnel"]
        )
        pool = {
            key: GaugeMetricFamily(f"revgw_pool_{key}", text, labels=["tunnel"])
            for key, text in (
                ("idle", "Tunnel connections idle, ready for a request"),
                ("busy", "Tunnel connections carrying a request"),
                ("warm", "Tunnel connections kept warm after a request"),
                ("waiting", "Requests waiting for a tunnel connection"),
            )
        }
        for tunnel in snapshot["tunnels"]:
            name = tunnel["name"]
            counters = stats.tunnels.get(name)
            if counters is not None:
                for status, count in sorted(counters.by_status.items()):
                    requests.add_metric([name, str(status)], count)
                bytes_in.add_metric([name], counters.bytes_in)
                bytes_out.add_metric([name], counters.bytes_out)
                wait.add_metric([name], counters.wait.cumulative(), counters.wait.sum)
                upstream.add_metric([name], counters.upstream.cumulative(), counters.upstream.sum)
            if name == NO_TUNNEL:
                continue
            online.add_metric([name], 1 if tunnel["online"] else 0)
            clients.add_metric([name], len(tunnel["clients"]))
            for key, family in pool.items():
                family.add_metric([name], tunnel["pool"][key])
        handshakes = CounterMetricFamily(
            "revgw_handshakes", "Tunnel handshakes, by result", labels=["result"]
        )
        for result, count in stats.handshakes.items():
            handshakes.add_metric([result], count)
        yield from (requests, bytes_in, bytes_out, wait, upstream, online, clients)
        yield from pool.values()
        yield handshakes


class _ClientCollector(Collector):
    def __init__(self, client: Client) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        status = client_status(self.client)
        yield GaugeMetricFamily(
            "revgw_client_pool_idle",
            "Connections idle at the gateway",
            value=status["pool"]["idle"],
        )
        yield GaugeMetricFamily(
            "revgw_client_pool_size",
            "Idle connections wanted (--pool)",
            value=status["pool"]["size"],
        )
        yield GaugeMetricFamily(
            "revgw_client_paired", "Connections carrying a request", value=status["pool"]["paired"]
        )
        per_gateway = GaugeMetricFamily(
            "revgw_client_gateway_idle", "Connections idle at each gateway", labels=["gateway"]
        )
        for gateway in status["gateways"]:
            per_gateway.add_metric([gateway["address"]], gateway["idle"])
        yield per_gateway
        yield CounterMetricFamily(
            "revgw_client_dials", "Tunnel connections dialled", status["dials"]
        )
        yield CounterMetricFamily(
            "revgw_client_dial_failures", "Dials that failed", status["dial_failures"]
        )
        yield GaugeMetricFamily(
            "revgw_client_backoff_seconds",
            "Current wait before re-dialling (0 when connected)",
            value=status["backoff"],
        )


def registry_for(owner: Gateway | Client) -> CollectorRegistry:
    """A registry of its own for this gateway or client."""
    registry = CollectorRegistry(auto_describe=False)
    if isinstance(owner, Gateway):
        registry.register(_GatewayCollector(owner))
    else:
        registry.register(_ClientCollector(owner))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
