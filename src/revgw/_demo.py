"""``revgw demo``: the whole chain in one process, for a first look.

The same four roles as the compose demo, wired together on 127.0.0.1:
a private server, a gateway, two clients sharing one tunnel, and a
producer asking for /ping once a second. Their log lines interleave, so a
reader can follow one request from the producer to the server and back.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import AsyncExitStack
from dataclasses import dataclass

from revgw_examples.producer import ProducerSettings
from revgw_examples.producer import run as run_producer
from revgw_examples.server import Server, ServerSettings

from ._client import Client
from ._errors import ConfigError
from ._gateway import Gateway
from ._settings import _address, setting

log = logging.getLogger("revgw.demo")


@dataclass(frozen=True)
class DemoSettings:
    listen: str = setting("127.0.0.1:9000", "public address of the demo gateway", "HOST:PORT")
    tunnel_listen: str = setting(
        "127.0.0.1:9001", "tunnel address of the demo gateway", "HOST:PORT"
    )
    server_listen: str = setting(
        "127.0.0.1:8080", "address of the demo private server", "HOST:PORT"
    )
    clients: int = setting(2, "how many clients serve the tunnel", "N")
    pool: int = setting(4, "idle connections each client keeps", "N")
    interval: float = setting(1.0, "seconds between the producer's requests", "SECONDS")
    count: int | None = setting(None, "stop after N requests (default: run until Ctrl-C)", "N")
    admin: str = setting(
        "127.0.0.1:9002",
        "the demo gateway's admin listener and status page ('off' = none)",
        "HOST:PORT|off",
    )

    def __post_init__(self) -> None:
        if self.clients < 1 or self.pool < 1:
            raise ConfigError("--clients and --pool must be 1 or more")
        # Check every value now: a bad one is a usage error (exit 2), not a failure
        # halfway through starting the chain with part of it already running.
        _address("--listen", self.listen)
        _address("--tunnel-listen", self.tunnel_listen)
        _address("--server-listen", self.server_listen)
        if self.admin != "off":
            _address("--admin", self.admin)
        ProducerSettings(interval=self.interval, count=self.count)


async def run_demo(settings: DemoSettings) -> int:
    token = secrets.token_hex(16)
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            Server(ServerSettings(listen=settings.server_listen))
        )
        gateway = await stack.enter_async_context(
            Gateway(
                listen=settings.listen,
                tunnel_listen=settings.tunnel_listen,
                token=token,
                admin=settings.admin,
            )
        )
        for number in range(1, settings.clients + 1):
            await stack.enter_async_context(
                Client(
                    gateway=gateway.tunnel_address,
                    target=server.address,
                    token=token,
                    pool=settings.pool,
                    client_id=f"demo-client-{number}",
                )
            )
        host, _, port = gateway.address.rpartition(":")
        browse = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
        log.info("open http://%s:%s/ping in a browser; Ctrl-C stops the demo", browse, port)
        producer = ProducerSettings(
            url=f"http://{gateway.address}/ping", interval=settings.interval, count=settings.count
        )
        log_producer = logging.getLogger("revgw.producer")
        return await run_producer(
            producer,
            out=log_producer.info,
            report=lambda text: log_producer.info("summary: %s", text),
        )
