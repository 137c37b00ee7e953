"""One settings object per role; each setting is documented once, here.

The CLI builds its flags, ``REVGW_*`` environment variables and ``--help``
from these dataclasses' fields, and the library takes them as keyword
arguments, so a setting cannot mean one thing on the command line and another
in code. Values are checked on construction and a bad one raises ConfigError.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from ._address import parse_address
from ._errors import ConfigError
from ._handshake import check_identity

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


def _address(name: str, value: str) -> None:
    try:
        parse_address(value)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class GatewaySettings:
    listen: str = setting("0.0.0.0:9000", "public HTTP address callers connect to", "HOST:PORT")
    tunnel_listen: str = setting(
        "0.0.0.0:9001", "address clients dial to offer tunnel connections", "HOST:PORT"
    )
    token: str | None = setting(
        None, "shared secret clients must prove; generated and printed when unset", "SECRET"
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

    def __post_init__(self) -> None:
        _address("--listen", self.listen)
        _address("--tunnel-listen", self.tunnel_listen)
        for name in (
            "pool_wait",
            "heartbeat",
            "handshake_timeout",
            "header_timeout",
            "idle_timeout",
            "upstream_timeout",
            "warm_timeout",
        ):
            _positive("--" + name.replace("_", "-"), getattr(self, name))
        if self.heartbeat > MAX_HEARTBEAT:
            raise ConfigError(
                f"--heartbeat must be at most {MAX_HEARTBEAT:g}, not {self.heartbeat}"
                " (clients refuse a longer one)"
            )
        if self.max_warm < 0:
            raise ConfigError(f"--max-warm must be 0 or more, not {self.max_warm}")
        if self.max_header_bytes < 1024:
            raise ConfigError("--max-header-bytes must be at least 1024")
        if self.default_tunnel:
            try:
                check_identity(self.default_tunnel, "x", ())
            except ValueError as exc:
                raise ConfigError(f"--default-tunnel: {exc}") from None
        if self.token is not None and not self.token:
            raise ConfigError("--token must not be empty")


def default_client_id() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40].strip("-.") or "client"
    return f"{name}-{os.getpid()}"


@dataclass(frozen=True)
class ClientSettings:
    gateway: str = setting("127.0.0.1:9001", "the gateway's tunnel address", "HOST:PORT")
    target: str = setting("127.0.0.1:8080", "the private server requests go to", "HOST:PORT")
    pool: int = setting(8, "idle tunnel connections kept ready at the gateway", "N")
    tunnel: str = setting("default", "name of the tunnel this client serves", "NAME")
    host: tuple[str, ...] = setting(
        (), "Host name routed to this tunnel (repeatable; in env, comma-separated)", "HOSTNAME"
    )
    token: str | None = setting(None, "the gateway's shared secret (required)", "SECRET")
    client_id: str = setting("", "name shown in the gateway's logs; none means hostname-pid", "ID")
    dial_timeout: float = setting(
        5.0, "seconds to connect and authenticate one tunnel connection", "SECONDS"
    )
    max_backoff: float = setting(
        10.0, "longest wait between re-dials while the gateway is unreachable", "SECONDS"
    )

    def __post_init__(self) -> None:
        _address("--gateway", self.gateway)
        _address("--target", self.target)
        if self.pool < 1:
            raise ConfigError(f"--pool must be 1 or more, not {self.pool}")
        _positive("--dial-timeout", self.dial_timeout)
        _positive("--max-backoff", self.max_backoff)
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
