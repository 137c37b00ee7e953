"""``host:port`` strings, the one way addresses appear in settings and logs."""

from __future__ import annotations

from typing import NamedTuple

from ._errors import ConfigError


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return format_address(self.host, self.port)


def parse_address(text: str) -> Address:
    """Parse ``host:port`` (``[::1]:80`` for IPv6); raise ConfigError saying why not."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{text!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"{text!r} is not host:port")
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{text!r} is not host:port (write IPv6 as [addr]:port)")
    if not port_text.isdigit():
        raise ConfigError(f"{text!r} has no numeric port")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} in {text!r} is out of range 0-65535")
    return Address(host, port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_of(sockname: object) -> str:
    """Format what ``getpeername()``/``getsockname()`` returned, for logs and headers."""
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return format_address(str(sockname[0]), int(sockname[1]))
    return "unknown"
