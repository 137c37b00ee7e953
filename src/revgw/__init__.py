"""revgw: reach a service behind NAT through a public gateway.

The gateway (public) takes HTTP from callers and tunnel connections from
clients; a client (next to the private server) keeps a pool of
connections dialled out to the gateway ahead of need, and splices each one
the gateway pairs with a request to the private server. Both roles are
async context managers that run inside your own asyncio program::

    async with revgw.Gateway(listen="0.0.0.0:9000", token=token) as gw: ...
    async with revgw.Client(gateway="gw.example.com:9001", target="127.0.0.1:8080",
                            token=token): ...
"""

from __future__ import annotations

from . import _caller
from ._client import Client
from ._errors import (
    AccessDenied,
    BadRequest,
    BadUpstreamResponse,
    BodyTooLarge,
    ConfigError,
    GatewayBusy,
    HeadersTooLarge,
    HTTPError,
    NoTunnel,
    PoolTimeout,
    ProtocolError,
    RevgwError,
    TooManyConnections,
    TunnelOffline,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from ._gateway import Gateway
from ._settings import ClientSettings, GatewaySettings

__version__ = "0.1.0"

# True when the gateway's hot path runs as C compiled by mypyc from its own
# source (setup.py), False when it runs as the plain Python.
COMPILED = not _caller.__file__.endswith(".py")

__all__ = [
    "COMPILED",
    "AccessDenied",
    "BadRequest",
    "BadUpstreamResponse",
    "BodyTooLarge",
    "Client",
    "ClientSettings",
    "ConfigError",
    "Gateway",
    "GatewayBusy",
    "GatewaySettings",
    "HTTPError",
    "HeadersTooLarge",
    "NoTunnel",
    "PoolTimeout",
    "ProtocolError",
    "RevgwError",
    "TooManyConnections",
    "TunnelOffline",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "__version__",
]
