"""Behaviour 1: pong through gateway -> client -> server."""

from __future__ import annotations

from helpers import get
from revgw import Gateway


async def test_ping_through_the_tunnel_answers_pong(chain: Gateway) -> None:
    response = await get(chain.address, "/ping")
    assert response.status == 200
    assert response.body == b"pong"
    assert response.header("x-revgw-error") is None
