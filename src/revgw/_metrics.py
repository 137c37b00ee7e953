"""What the admin listener reports: plain counters on the hot path, snapshots when asked.

A request costs a dict lookup, a few integer additions and two bucket searches here;
labels, families and text are built only when someone asks (``/api/tunnels``,
``/api/status``, and ``/metrics``, whose Prometheus form is in _prometheus.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from ._tunnel_conn import TunnelState

if TYPE_CHECKING:
    from ._client import Client
    from ._gateway import Gateway

# Seconds: from a warm connection's millisecond to --upstream-timeout's minute.
# (Typed as a tuple of any length: mypyc would keep a fixed one as 15 C doubles
# and box them all into a new tuple for every loop over it.)
BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
HANDSHAKE_RESULTS = ("accepted", "denied", "busy")
NO_TUNNEL = "-"  # the label of requests answered before a tunnel was chosen (404, 400)
MAX_FORGOTTEN_CLIENTS = 1024  # client entries kept for departed clients before pruning


class Histogram:
    """Bucket counts and a sum; observing finds the bucket and adds twice."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # A loop, not bisect: compiled, it compares floats without a call, and
        # almost every request stops at the first bucket or two.
        index = 0
        for bound in BUCKETS:
            if value <= bound:
                break
            index += 1
        self.counts[index] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        total = 0
        out = []
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


class TunnelStats:
    """One tunnel's counters since the gateway started."""

    __slots__ = ("by_status", "bytes_in", "bytes_out", "upstream", "wait")

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.bytes_in = 0  # request bodies from callers
        self.bytes_out = 0  # responses to callers
        self.wait = Histogram()  # from the request head to a paired tunnel connection
        self.upstream = Histogram()  # from pairing to the response's end

    @property
    def requests(self) -> int:
        return sum(self.by_status.values())


class GatewayStats:
    """Counters the gateway's connections bump; read by the collector and the JSON API."""

    def __init__(self) -> None:
        self.started = time.time()
        self.tunnels: dict[str, TunnelStats] = {}
        self.handshakes = dict.fromkeys(HANDSHAKE_RESULTS, 0)
        self.clients: dict[tuple[str, str], tuple[str, float]] = {}  # -> (address, since)

    def tunnel(self, name: str) -> TunnelStats:
        stats = self.tunnels.get(name)
        if stats is None:
            stats = self.tunnels[name] = TunnelStats()
        return stats

    def answered(self, tunnel: str, status: int) -> None:
        """A request the gateway answered itself (no tunnel connection carried it)."""
        by_status = self.tunnel(tunnel or NO_TUNNEL).by_status
        by_status[status] = by_status.get(status, 0) + 1

    def carried(
        self,
        tunnel: str,
        status: int,
        *,
        wait: float,
        upstream: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """A request that went through a tunnel connection has ended (once per request)."""
        stats = self.tunnel(tunnel)
        stats.by_status[status] = stats.by_status.get(status, 0) + 1
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out
        stats.wait.observe(wait)
        stats.upstream.observe(upstream)

    def client_joined(self, tunnel: str, client: str, address: str) -> None:
        if len(self.clients) > MAX_FORGOTTEN_CLIENTS:
            self.clients.clear()  # only the departed are lost: live ones re-register below
        self.clients[(tunnel, client)] = (address, time.time())


def tunnels_snapshot(gateway: Gateway) -> dict[str, Any]:
    """``/api/tunnels``: every tunnel, its clients, pool and counters (also the page's data)."""
    stats = gateway.stats
    busy_states = (TunnelState.PAIRED, TunnelState.SPLICED)
    tunnels: list[dict[str, Any]] = []
    names = sorted(set(gateway.registry.tunnels) | set(stats.tunnels))
    for name in names:
        tunnel = gateway.registry.tunnels.get(name)
        counters = stats.tunnels.get(name) or TunnelStats()
        clients = []
        pool = {"live": 0, "idle": 0, "busy": 0, "warm": 0, "waiting": 0}
        if tunnel is not None:
            for client in sorted(tunnel.clients):
                address, since = stats.clients.get((name, client), ("unknown", stats.started))
                clients.append(
                    {
                        "id": client,
                        "address": address,
                        "since": round(since, 3),
                        "connections": tunnel.clients[client],
                    }
                )
            pool = {
                "live": len(tunnel.live),
                "idle": tunnel.idle_count,
                "busy": sum(1 for c in tunnel.live if c.state in busy_states),
                "warm": tunnel.warm_count,
                "waiting": tunnel.waiting_count,
            }
        tunnels.append(
            {
                "name": name,
                "hosts": sorted(tunnel.hosts) if tunnel is not None else [],
                "online": tunnel is not None and tunnel.online,
                "clients": clients,
                "pool": pool,
                "counters": {
                    "requests": counters.requests,
                    "by_status": {str(k): v for k, v in sorted(counters.by_status.items())},
                    "bytes_in": counters.bytes_in,
                    "bytes_out": counters.bytes_out,
                },
            }
        )
    return {
        "gateway": {
            "address": gateway.address,
            "tunnel_address": gateway.tunnel_address,
            "uptime": round(time.time() - stats.started, 3),
            "handshakes": dict(stats.handshakes),
            "clients_connected": sum(len(t["clients"]) for t in tunnels),
        },
        "tunnels": tunnels,
    }


def client_status(client: Client) -> dict[str, Any]:
    """``/api/status`` of a client: its pool, dials, failures and backoff."""
    settings = client.settings
    keepers = client.keepers
    return {
        "client_id": settings.client_id,
        "tunnel": settings.tunnel,
        "gateway": ", ".join(settings.gateway),
        "target": settings.target,
        "pool": {
            "size": settings.pool,
            "idle": client.idle_count,
            "paired": sum(len(k.splices) for k in keepers),
        },
        "dials": sum(k.dials for k in keepers),
        "dial_failures": sum(k.dial_failures for k in keepers),
        "backoff": max((k.backoff for k in keepers), default=0.0),
        "gateways": [  # one pool per gateway address
            {
                "address": k.label,
                "idle": k.idle_count,
                "paired": len(k.splices),
                "dials": k.dials,
                "dial_failures": k.dial_failures,
                "backoff": k.backoff,
            }
            for k in keepers
        ],
    }
