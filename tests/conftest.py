"""Shared fixtures: the real roles on loopback port 0, started and stopped per test."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

import revgw
from revgw import COMPILED, Client, Gateway
from revgw._cli import BUILD
from revgw_examples.server import Server, ServerSettings

sys.path.insert(0, str(Path(__file__).parent))

TOKEN = "test-token-0123456789"


def pytest_report_header() -> str:
    return f"revgw: {BUILD} ({Path(revgw.__file__).parent})"


def pytest_configure(config: pytest.Config) -> None:
    """``make test``'s second pass must run the compiled build, not fall back quietly."""
    if os.environ.get("REVGW_EXPECT_COMPILED") == "1" and not COMPILED:
        raise pytest.UsageError(
            f"REVGW_EXPECT_COMPILED=1, but revgw at {revgw.__file__} is plain Python"
        )


T = TypeVar("T")


@asynccontextmanager
async def held(manager: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter and exit ``manager`` in one task of its own.

    pytest-asyncio runs a fixture's setup and teardown in different tasks,
    and anyio task groups (rightly) refuse to be exited from another task
    than the one that entered them. Tests that use ``async with`` directly
    need none of this.
    """
    entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def hold() -> None:
        async with manager as value:
            entered.set_result(value)
            await stop.wait()

    task = asyncio.create_task(hold())
    await asyncio.wait([entered, task], return_when=asyncio.FIRST_COMPLETED)
    if not entered.done():
        await task  # raises whatever entering raised
    try:
        yield entered.result()
    finally:
        stop.set()
        await task


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """The demo private server on a free port."""
    async with held(Server(ServerSettings(listen="127.0.0.1:0"))) as srv:
        yield srv


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gateway]]
ClientFactory = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture
def make_gateway() -> GatewayFactory:
    """``async with make_gateway(pool_wait=1) as gw:`` - a gateway on free ports."""

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[Gateway]:
        options: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "tunnel_listen": "127.0.0.1:0",
            "token": TOKEN,
            "admin": "127.0.0.1:0",  # several gateways at once must not share 9002
        }
        options.update(overrides)
        async with Gateway(**options) as gw:
            yield gw

    return factory


@pytest.fixture
def make_client(server: Server) -> ClientFactory:
    """``async with make_client(gw, pool=2) as c:`` - a client whose pool is full on entry."""

    @asynccontextmanager
    async def factory(
        gateway: Gateway, wait: bool = True, **overrides: Any
    ) -> AsyncIterator[Client]:
        options: dict[str, Any] = {
            "gateway": gateway.tunnel_address,
            "target": server.address,
            "token": TOKEN,
            "pool": 2,
            "max_backoff": 0.5,
        }
        options.update(overrides)
        async with Client(**options) as client:
            if wait:
                await client.wait_ready()
            yield client

    return factory


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with held(make_gateway()) as gw:
        yield gw


@pytest.fixture
async def chain(gateway: Gateway, make_client: ClientFactory) -> AsyncIterator[Gateway]:
    """Gateway + one client (pool 2) + the demo server: the whole path, ready."""
    async with held(make_client(gateway)):
        yield gateway
