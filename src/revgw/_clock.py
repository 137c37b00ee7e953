"""One clock for all of a gateway's timeouts.

A timer per request (``loop.call_later`` on every state change, cancelled a
moment later) cost about a sixth of the gateway's CPU under keep-alive load.
Instead each connection and exchange keeps the ``deadline`` of its current
state, a plain number, and one task looks at them all every ``tick``
seconds. A timeout fires up to one tick late; the tick is a quarter of the
shortest timeout, at most half a second.
"""

from __future__ import annotations

import math

NEVER = math.inf


def tick_for(*timeouts: float) -> float:
    """How often to look: a quarter of the shortest timeout, 10 ms to 500 ms."""
    return min(0.5, max(0.01, min(timeouts) / 4))
