"""One settings object per role; each setting is documented once, here.

The CLI builds its flags, ``REVGW_*`` environment variables and ``--help``
from these dataclasses' fields, and the library takes them as keyword
arguments, so a setting cannot mean one thing on the command line and another
in code. Values are checked on construction and a bad one raises ConfigError.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from ._address import parse_address
from ._errors import ConfigError
from ._handshake import check_identity
from ._tls import check_pair, load_ca, parse_fingerprint, server_context
from ._tokens import check_credential, declared_fields, load_tokens

# The longest heartbeat a client accepts in a CHALLENGE (``_handshake.parse_challenge``):
# a gateway announcing more would be refused by every client.
MAX_HEARTBEAT = 3600.0


def setting(default: Any, help: str, metavar: str | None = None) -> Any:
    """A dataclass field that carries its help text (for ``--help`` and docs)."""
    if isinstance(default, list | tuple):
        items = tuple(default)
        return field(default_factory=lambda: items, metadata={"help": help, "metavar": metavar})
    return field(default=default, metadata={"help": help, "metavar": metavar})


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be greater than 0, not {value}")


def _not_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{name} must be 0 or more, not {value}")


def _address(name: str, value: str) -> None:
    try:
        parse_address(value)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _networks(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--trusted-proxies`` values, checked and written the canonical way (``10.0.0.0/8``)."""
    networks = []
    for value in (v.strip() for v in values):
        if not value:
            continue
        try:
            networks.append(str(ipaddress.ip_network(value)))
        except ValueError as exc:
            raise ConfigError(f"--trusted-proxies {value!r}: {exc}") from None
    return tuple(networks)


@dataclass(frozen=True)
class GatewaySettings:
    listen: str = setting("0.0.0.0:9000", "public HTTP address callers connect to", "HOST:PORT")
    tunnel_listen: str = setting(
        "0.0.0.0:9001", "address clients dial to offer tunnel connections", "HOST:PORT"
    )
    token: str | None = setting(
        None, "shared secret clients must prove; generated and printed when unset", "SECRET"
    )
    tokens: str | None = setting(
        None, "TOML file of scoped tokens, one per tenant (re-read on SIGHUP)", "FILE"
    )
    pool_wait: float = setting(
        10.0, "seconds a request waits for a free tunnel connection before 503", "SECONDS"
    )
    default_tunnel: str = setting(
        "default", "tunnel for requests whose Host no tunnel claims ('' = answer 404)", "NAME"
    )
    heartbeat: float = setting(5.0, "seconds between PINGs on idle tunnel connections", "SECONDS")
    handshake_timeout: float = setting(
        5.0, "seconds a new tunnel connection has to authenticate", "SECONDS"
    )
    header_timeout: float = setting(10.0, "seconds a caller has to send a request head", "SECONDS")
    idle_timeout: float = setting(
        60.0, "seconds an idle keep-alive caller connection stays open", "SECONDS"
    )
    upstream_timeout: float = setting(
        60.0, "seconds the private server has to start answering before 504", "SECONDS"
    )
    warm_timeout: float = setting(
        4.0, "seconds a warm tunnel connection (still linked to the server) is kept", "SECONDS"
    )
    max_warm: int = setting(64, "warm tunnel connections kept per tunnel", "N")
    max_header_bytes: int = setting(32768, "largest request head accepted (else 431)", "BYTES")
    max_body_bytes: int = setting(
        1 << 30, "largest request body passed on (else 413; chunked: cut off)", "BYTES"
    )
    max_callers: int = setting(
        10000, "public connections held at once; more get 503 too-many-connections", "N"
    )
    max_conns_per_client: int = setting(
        1024, "tunnel connections one client id may hold; more are told BUSY", "N"
    )
    max_conns_per_tunnel: int = setting(
        4096, "tunnel connections one tunnel may hold, all clients together", "N"
    )
    max_auth_failures: int = setting(
        10, "failed handshakes from one address before it is refused for a while", "N"
    )
    auth_failure_window: float = setting(
        60.0, "seconds after which an address's failed handshakes are forgotten", "SECONDS"
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "proxy address or network whose X-Forwarded-For/-Proto/-Host are kept and appended to"
        " instead of replaced (repeatable; in env, comma-separated)",
        "CIDR",
    )
    tls_cert: str | None = setting(
        None, "PEM certificate (chain): the tunnel port speaks TLS (give the key too)", "FILE"
    )
    tls_key: str | None = setting(None, "PEM private key of the tunnel certificate", "FILE")
    public_tls_cert: str | None = setting(
        None,
        "PEM certificate (chain): the public port speaks HTTPS (give the key too)",
        "FILE",
    )
    public_tls_key: str | None = setting(None, "PEM private key of the public certificate", "FILE")
    admin: str = setting(
        "127.0.0.1:9002",
        "admin listener: /healthz, /readyz, /metrics, /api/tunnels, status page ('off' = none)",
        "HOST:PORT|off",
    )
    ready_needs_tunnel: str = setting(
        "",
        "/readyz answers 503 until this tunnel is online ('' = listeners bound is enough)",
        "NAME",
    )
    grace: float = setting(
        10.0, "on SIGTERM, seconds in-flight requests get to finish before they are cut", "SECONDS"
    )
    tcp_ports: str = setting(
        "", "public ports TCP tunnels may listen on ('' = no TCP tunnels)", "LO-HI"
    )
    tcp_linger: float = setting(
        30.0, "seconds a TCP tunnel's port stays open after its last client left", "SECONDS"
    )

    def __post_init__(self) -> None:
        _address("--listen", self.listen)
        tcp_port_range(self.tcp_ports)
        _not_negative("--tcp-linger", self.tcp_linger)
        _address("--tunnel-listen", self.tunnel_listen)
        if self.admin != "off":
            _address("--admin", self.admin)
        for name in (
            "pool_wait",
            "heartbeat",
            "handshake_timeout",
            "header_timeout",
            "idle_timeout",
            "upstream_timeout",
            "warm_timeout",
            "auth_failure_window",
        ):
            _positive("--" + name.replace("_", "-"), getattr(self, name))
        if self.heartbeat > MAX_HEARTBEAT:
            raise ConfigError(
                f"--heartbeat must be at most {MAX_HEARTBEAT:g}, not {self.heartbeat}"
                " (clients refuse a longer one)"
            )
        if self.max_warm < 0:
            raise ConfigError(f"--max-warm must be 0 or more, not {self.max_warm}")
        _not_negative("--grace", self.grace)
        if self.max_header_bytes < 1024:
            raise ConfigError("--max-header-bytes must be at least 1024")
        for name in (
            "max_body_bytes",
            "max_callers",
            "max_conns_per_client",
            "max_conns_per_tunnel",
            "max_auth_failures",
        ):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be 1 or more, not {getattr(self, name)}")
        if self.default_tunnel:
            try:
                check_identity(self.default_tunnel, "x", ())
            except ValueError as exc:
                raise ConfigError(f"--default-tunnel: {exc}") from None
        if self.token is not None and not self.token:
            raise ConfigError("--token must not be empty")
        if self.tokens is not None:
            if self.token is not None:
                raise ConfigError(
                    "--token and --tokens exclude each other: an all-powerful token next to "
                    "scoped ones would undo their scoping (give it a tenant in the file)"
                )
            load_tokens(self.tokens)  # a bad file stops the gateway before it starts
        object.__setattr__(self, "trusted_proxies", _networks(self.trusted_proxies))
        if check_pair(self.tls_cert, self.tls_key, "--tls-cert", "--tls-key"):
            server_context(self.tls_cert or "", self.tls_key or "", "--tls-cert")
        if check_pair(
            self.public_tls_cert, self.public_tls_key, "--public-tls-cert", "--public-tls-key"
        ):
            server_context(
                self.public_tls_cert or "", self.public_tls_key or "", "--public-tls-cert"
            )


def tcp_port_range(text: str) -> range:
    """``--tcp-ports LO-HI`` as a range (empty for ''); ConfigError if unusable."""
    if not text:
        return range(0)
    lo, sep, hi = text.partition("-")
    if not (sep and lo.isdigit() and hi.isdigit() and 1 <= int(lo) <= int(hi) <= 65535):
        raise ConfigError(f"--tcp-ports {text!r} must be LO-HI, ports 1-65535, LO <= HI")
    return range(int(lo), int(hi) + 1)


def default_client_id() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40].strip("-.") or "client"
    return f"{name}-{os.getpid()}"


@dataclass(frozen=True)
class ClientSettings:
    gateway: tuple[str, ...] = setting(
        ("127.0.0.1:9001",),
        "a gateway's tunnel address; a pool is kept at each (repeatable; a name "
        "resolving to several addresses gets a pool per address)",
        "HOST:PORT",
    )
    target: str = setting("127.0.0.1:8080", "the private server requests go to", "HOST:PORT")
    pool: int = setting(8, "idle tunnel connections kept ready at the gateway", "N")
    tunnel: str = setting("default", "name of the tunnel this client serves", "NAME")
    host: tuple[str, ...] = setting(
        (), "Host name routed to this tunnel (repeatable; in env, comma-separated)", "HOSTNAME"
    )
    token: str | None = setting(None, "the gateway's shared secret (required)", "SECRET")
    basic_auth: tuple[str, ...] = setting(
        (), "callers must send these Basic credentials (repeatable; sent hashed)", "USER:PASS"
    )
    allow_cidr: tuple[str, ...] = setting(
        (), "only callers from these networks reach the tunnel (repeatable)", "CIDR"
    )
    client_id: str = setting("", "name shown in the gateway's logs; none means hostname-pid", "ID")
    dial_timeout: float = setting(
        5.0, "seconds to connect and authenticate one tunnel connection", "SECONDS"
    )
    max_backoff: float = setting(
        10.0, "longest wait between re-dials while the gateway is unreachable", "SECONDS"
    )
    tls: bool = setting(
        False, "dial the gateway over TLS, verified with the system's CAs", "yes|no"
    )
    ca: str | None = setting(
        None, "verify the gateway against this PEM CA file instead (implies TLS)", "FILE"
    )
    fingerprint: str | None = setting(
        None, "trust only a gateway certificate with this SHA-256 (implies TLS)", "sha256:HEX"
    )
    trust_on_first_use: bool = setting(
        False,
        "remember the gateway certificate seen first, refuse a changed one (implies TLS)",
        "yes|no",
    )
    known_gateways: str = setting(
        "~/.config/revgw/known_gateways",
        "where trust on first use keeps 'host:port sha256:HEX' lines",
        "FILE",
    )
    admin: str = setting(
        "off",
        "admin listener: /healthz, /readyz, /metrics, /api/status ('off' = none)",
        "HOST:PORT|off",
    )
    server_name: str | None = setting(
        None, "name to verify in the gateway's certificate (SNI) when dialling by IP", "NAME"
    )
    grace: float = setting(
        10.0, "on SIGTERM, seconds in-flight requests get to finish before they are cut", "SECONDS"
    )
    tcp: str | None = setting(
        None, "serve a raw TCP tunnel on this public gateway port (or 'auto')", "PORT|auto"
    )
    proxy_protocol: str | None = setting(
        None, "TCP tunnels: send the caller's address to the server as PROXY v1 or v2", "v1|v2"
    )

    def __post_init__(self) -> None:
        gateways: Any = self.gateway
        if isinstance(gateways, str):  # Client(gateway="h:p"), as the README shows
            gateways = (gateways,)
        gateways = tuple(dict.fromkeys(g.strip() for g in gateways if g.strip()))
        if not gateways:
            raise ConfigError("--gateway: give at least one gateway address")
        object.__setattr__(self, "gateway", gateways)
        for gateway in gateways:
            _address("--gateway", gateway)
        _address("--target", self.target)
        if self.tcp is not None and not (
            self.tcp == "auto" or (self.tcp.isdigit() and 1 <= int(self.tcp) <= 65535)
        ):
            raise ConfigError(f"--tcp must be a port 1-65535 or 'auto', not {self.tcp!r}")
        if self.tcp is not None and self.host:
            raise ConfigError("--tcp and --host exclude each other: a TCP tunnel has no Host")
        if self.proxy_protocol not in (None, "v1", "v2"):
            raise ConfigError(f"--proxy-protocol must be v1 or v2, not {self.proxy_protocol!r}")
        if self.pool < 1:
            raise ConfigError(f"--pool must be 1 or more, not {self.pool}")
        _positive("--dial-timeout", self.dial_timeout)
        _positive("--max-backoff", self.max_backoff)
        if self.admin != "off":
            _address("--admin", self.admin)
        _not_negative("--grace", self.grace)
        if not self.client_id:
            object.__setattr__(self, "client_id", default_client_id())
        hosts = tuple(h.strip().lower() for h in self.host if h.strip())
        object.__setattr__(self, "host", hosts)
        try:
            check_identity(self.tunnel, self.client_id, hosts)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not self.token:
            raise ConfigError("--token is required: use the token the gateway printed")
        try:
            for credential in self.basic_auth:
                check_credential(credential)
            declared_fields(self.tunnel, self.basic_auth, self.allow_cidr)
        except ValueError as exc:
            flag = "--allow-cidr" if "network" in str(exc) else "--basic-auth"
            raise ConfigError(f"{flag}: {exc}") from None
        ways = [
            f
            for f, v in (
                ("--ca", self.ca),
                ("--fingerprint", self.fingerprint),
                ("--trust-on-first-use", self.trust_on_first_use),
            )
            if v
        ]
        if len(ways) > 1:
            raise ConfigError(f"{' and '.join(ways)} exclude each other: choose one way to trust")
        if self.fingerprint is not None:
            object.__setattr__(self, "fingerprint", parse_fingerprint(self.fingerprint))
        if self.ca is not None:
            load_ca(self.ca)
        if ways:
            object.__setattr__(self, "tls", True)
