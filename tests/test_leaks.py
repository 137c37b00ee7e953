"""No file descriptor outlives its connection, whichever way the connection ended."""

from __future__ import annotations

import asyncio
import gc
import os

from conftest import ClientFactory, GatewayFactory
from helpers import Connection, get
from revgw import Gateway
from revgw._caller import CallerConnection
from revgw._http import RequestReader


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(baseline: int, slack: int = 2) -> int:
    """Wait (bounded) for closing transports to release their descriptors."""
    for _ in range(250):  # observing the kernel catch up, not waiting for readiness
        if open_fds() <= baseline + slack:
            break
        await asyncio.sleep(0.02)
    return open_fds()


async def test_no_descriptor_leaks_across_many_kinds_of_request(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Fresh, keep-alive, errored, abandoned and upgraded-then-closed exchanges all clean up."""
    baseline = open_fds()
    async with make_gateway(upstream_timeout=0.2) as gw:
        async with make_client(gw, pool=4):
            for _ in range(3):
                # fresh connections
                results = await asyncio.gather(*(get(gw.address, "/ping") for _ in range(50)))
                assert all(r.status == 200 for r in results)
                # keep-alive on one connection
                conn = await Connection.open(gw.address)
                for _ in range(20):
                    assert (await conn.request(target="/ping")).status == 200
                await conn.close()
                # an upstream timeout (504) closes its tunnel connection
                assert (await get(gw.address, "/slow?ms=1000")).status == 504
                # a caller that leaves mid-download
                conn = await Connection.open(gw.address)
                await conn.send(b"GET /bytes/50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
                await conn.reader.read(65536)
                await conn.close()
                # garbage on the public port
                conn = await Connection.open(gw.address)
                await conn.send(b"NONSENSE\r\n\r\n")
                await conn.closed_by_peer()
                await conn.close()
        assert (await get(gw.address, "/ping")).status == 503
    assert await settle(baseline) <= baseline + 2


async def test_a_stopped_client_serves_nothing_not_even_warm_connections(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Warm connections are spliced to the server; leaving the client closes them too."""
    async with make_gateway(warm_timeout=60) as gw:  # only the client can end them
        async with make_client(gw, pool=2):
            assert (await get(gw.address, "/ping")).status == 200  # leaves one warm
            assert gw.registry.tunnels["default"].warm_count >= 1
        for _ in range(250):  # observing the gateway see the FINs, not readiness
            if not gw.registry.tunnels["default"].online:
                break
            await asyncio.sleep(0.02)
        answer = await get(gw.address, "/ping")
        assert answer.status == 503
        assert answer.header("x-revgw-error") == "tunnel-offline"


async def test_finished_callers_are_freed_without_the_garbage_collector(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Nothing a caller or a request leaves behind forms a reference cycle.

    A cycle (e.g. the request parser and its reader pointing at each other)
    is freed only by a garbage collection: under fresh-connection load that
    was a collection every few dozen callers, a few per cent of the CPU.
    With the collector off, whatever is in a cycle stays among the objects
    it tracks (compiled classes take no weak references, so they are counted).
    """

    def alive() -> int:
        kinds = (CallerConnection, RequestReader)
        return sum(1 for thing in gc.get_objects() if isinstance(thing, kinds))

    async def callers_gone(gw: Gateway) -> None:
        for _ in range(100):  # until the gateway has seen every close
            if not gw.callers:
                break
            await asyncio.sleep(0.01)

    async with make_gateway() as gw, make_client(gw, pool=2):
        assert (await get(gw.address, "/ping")).status == 200  # warm everything up
        await callers_gone(gw)
        gc.collect()
        before = alive()  # (the private server parses requests with a reader too)
        gc.disable()
        try:
            for _ in range(20):
                assert (await get(gw.address, "/ping")).status == 200  # Connection: close
            conn = await Connection.open(gw.address)
            for _ in range(5):
                assert (await conn.request(target="/ping")).status == 200
            assert alive() > before  # the open caller and its reader are seen
            await conn.close()
            await callers_gone(gw)
            left = alive()
        finally:
            gc.enable()
    assert left == before
