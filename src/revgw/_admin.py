"""The admin listener: health, readiness, Prometheus metrics, JSON and a live status page.

A tiny HTTP/1.1 server on its own address (never the public port), built on
the same sans-IO ``RequestReader`` as the gateway. One GET per connection,
answered and closed: the callers are probes, scrapers and one browser page,
and each answer is computed from counters at that moment.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

from ._address import parse_address, peer_of
from ._errors import ConfigError, HTTPError
from ._http import RequestHead, RequestReader
from ._metrics import client_status, tunnels_snapshot

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._client import Client
    from ._gateway import Gateway

log = logging.getLogger("revgw.admin")

OFF = "off"
READ_TIMEOUT = 10.0  # seconds an admin connection may take to send its request
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"

Answer = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Answer]

# The status page's table: (heading, JSON path in a tunnel of /api/tunnels). The page's
# script fills the same cells from the same paths, so both show the same numbers.
COLUMNS = (
    ("tunnel", "name"),
    ("online", "online"),
    ("clients", "clients"),
    ("idle", "pool.idle"),
    ("busy", "pool.busy"),
    ("warm", "pool.warm"),
    ("waiting", "pool.waiting"),
    ("requests", "counters.requests"),
    ("bytes in", "counters.bytes_in"),
    ("bytes out", "counters.bytes_out"),
)


def text(status: int, body: str) -> Answer:
    return status, TEXT, (body + "\n").encode()


def as_json(value: Any) -> Answer:
    return 200, JSON, json.dumps(value, indent=1).encode()


def cell(value: Any) -> str:
    """How the page writes a value; the script's ``cell`` does the same."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return str(len(value))
    return str(value)


def lookup(tunnel: dict[str, Any], path: str) -> Any:
    value: Any = tunnel
    for key in path.split("."):
        value = value[key]
    return value


def status_page(snapshot: dict[str, Any]) -> bytes:
    """The page with the current numbers already in it; its script keeps them current."""
    rows = []
    for tunnel in snapshot["tunnels"]:
        name = html.escape(tunnel["name"], quote=True)
        cells = "".join(
            f'<td data-tunnel="{name}" data-field="{path}">'
            f"{html.escape(cell(lookup(tunnel, path)))}</td>"
            for _, path in COLUMNS
        )
        rows.append(f"<tr>{cells}</tr>")
    template = resources.files("revgw").joinpath("_status_page.html").read_text("utf-8")
    headings = "".join(f"<th>{html.escape(h)}</th>" for h, _ in COLUMNS)
    columns = json.dumps([path for _, path in COLUMNS])
    page = (
        template.replace("{{HEADINGS}}", headings)
        .replace("{{ROWS}}", "\n".join(rows))
        .replace("{{COLUMNS}}", columns)
    )
    return page.encode()


# --- the routes ----------------------------------------------------------------------------


def _metrics_route(owner: Gateway | Client) -> Route:
    """``/metrics``; prometheus_client is imported at the first scrape (_prometheus.py)."""
    registry: CollectorRegistry | None = None

    def metrics() -> Answer:
        nonlocal registry
        from . import _prometheus  # noqa: PLC0415 (on purpose: see the docstring)

        if registry is None:
            registry = _prometheus.registry_for(owner)
        return 200, PROMETHEUS, _prometheus.exposition(registry)

    return metrics


def gateway_routes(gateway: Gateway) -> dict[str, Route]:
    def readyz() -> Answer:
        if not gateway.address or not gateway.tunnel_address:
            return text(503, "not ready: the public and tunnel ports are not bound")
        if gateway.draining:
            return text(503, "not ready: draining (stopping)")
        needed = gateway.settings.ready_needs_tunnel
        if needed:
            tunnel = gateway.registry.tunnels.get(needed)
            if tunnel is None or not tunnel.online:
                return text(503, f"not ready: tunnel '{needed}' is offline (--ready-needs-tunnel)")
        return text(200, "ready")

    return {
        "/healthz": lambda: text(200, "ok"),
        "/readyz": readyz,
        "/metrics": _metrics_route(gateway),
        "/api/tunnels": lambda: as_json(tunnels_snapshot(gateway)),
        "/": lambda: (200, "text/html; charset=utf-8", status_page(tunnels_snapshot(gateway))),
    }


def client_routes(client: Client) -> dict[str, Route]:
    def readyz() -> Answer:
        if client.idle_count < 1:
            return text(503, "not ready: no idle connection at the gateway yet")
        return text(200, "ready")

    return {
        "/healthz": lambda: text(200, "ok"),
        "/readyz": readyz,
        "/metrics": _metrics_route(client),
        "/api/status": lambda: as_json(client_status(client)),
    }


# --- the server ------------------------------------------------------------------------------


class AdminServer:
    """The listening socket and its open connections; ``aclose`` ends both."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.address = ""
        self.connections: set[AdminConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, address: str, role: str) -> None:
        host, port = parse_address(address)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: AdminConnection(self), host or None, port
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {address} (--admin): {exc.strerror or exc}"
                " (use --admin off to run without it)"
            ) from exc
        self.address = peer_of(self._server.sockets[0].getsockname())
        log.info("%s admin on http://%s/ (/healthz /readyz /metrics)", role, self.address)

    async def aclose(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections):
            conn.close()
        await self._server.wait_closed()


async def start_admin(routes: dict[str, Route], address: str, role: str) -> AdminServer | None:
    """Listen on ``address`` (``off``: no admin listener, None)."""
    if address == OFF:
        return None
    server = AdminServer(routes)
    await server.start(address, role)
    return server


class AdminConnection(asyncio.Protocol):
    """One admin request: read its head, answer, close."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._reader = RequestReader()
        self._answered = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self._timer = asyncio.get_running_loop().call_later(READ_TIMEOUT, self.close)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # a body we do not read: dropped until the caller closes
        try:
            events = self._reader.feed(data)
        except HTTPError as exc:
            self._send(exc.status, TEXT, (str(exc) + "\n").encode(), head_only=False)
            return
        for event in events:
            if isinstance(event, RequestHead):
                self._respond(event)
                return

    def _respond(self, head: RequestHead) -> None:
        path = head.target.split(b"?", 1)[0].decode("latin-1")
        route = self.server.routes.get(path)
        method = head.method
        if route is None:
            known = " ".join(sorted(self.server.routes))
            status, ctype, body = text(404, f"no admin endpoint {path[:100]}; try: {known}")
        elif method not in (b"GET", b"HEAD"):
            status, ctype, body = text(405, "the admin endpoints answer GET and HEAD only")
        else:
            try:
                status, ctype, body = route()
            except Exception:
                log.exception("admin endpoint %s failed", path)
                status, ctype, body = text(500, "internal error (see the log)")
        self._send(status, ctype, body, head_only=method == b"HEAD")

    def _send(self, status: int, ctype: str, body: bytes, head_only: bool) -> None:
        transport = self.transport
        self._answered = True
        if transport is None or transport.is_closing():
            return
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if status == 405:
            lines.append("Allow: GET, HEAD")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        transport.write(head if head_only else head + body)
        # Half-close, then close at the caller's EOF (or the timer): closing with
        # an unread request body would reset the connection and could lose the answer.
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def eof_received(self) -> bool:
        return False

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
