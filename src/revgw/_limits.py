"""Bookkeeping for the gateway's limits, sans-IO: numbers in, decisions out.

Nothing here owns a timer. The gateway passes its clock's ``now``
(``time.monotonic``) to every call, so a blocked address costs one dict
entry and no task, and the tests drive time by hand.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# Most source addresses whose failed handshakes are remembered; the oldest is forgotten first.
MAX_TRACKED = 10_000
# Longest refusal after repeated failed authentications.
MAX_BLOCK = 300.0


@dataclass(slots=True)
class _Record:
    failures: int
    last: float
    blocked_until: float


class AuthFailures:
    """Failed authentications per source address: past ``limit``, refuse for a while.

    The ``limit``-th failure with no gap longer than ``window`` between
    failures blocks the address for 1 s; each later failure doubles that, up
    to MAX_BLOCK. A quiet ``window`` (and no block running) forgets the
    address. Successes change nothing: an attacker sharing an address with a
    real client must not get a fresh count from that client's handshakes.
    """

    def __init__(self, limit: int, window: float, max_tracked: int = MAX_TRACKED) -> None:
        self.limit = limit
        self.window = window
        self._max = max_tracked
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def blocked_for(self, address: str, now: float) -> float:
        """Seconds ``address`` stays refused; 0 if it may try."""
        record = self._records.get(address)
        if record is None:
            return 0.0
        return max(0.0, record.blocked_until - now)

    def failed(self, address: str, now: float) -> float:
        """Count a failure; return the block it starts (seconds), or 0 if none yet."""
        record = self._records.pop(address, None)
        if record is None or (now - record.last > self.window and now >= record.blocked_until):
            record = _Record(0, now, 0.0)
        record.failures += 1
        record.last = now
        block = 0.0
        if record.failures >= self.limit:
            block = min(MAX_BLOCK, 2.0 ** (record.failures - self.limit))
            record.blocked_until = now + block
        self._records[address] = record  # most recent last
        while len(self._records) > self._max:
            self._records.popitem(last=False)
        return block


class BurstLog:
    """Count events and say so at most once per ``interval``: one log line per burst."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._pending = 0
        self._last = -interval

    def note(self, now: float) -> int:
        """Count one event; return how many to report now (0: stay quiet)."""
        self._pending += 1
        return self.flush(now)

    def flush(self, now: float) -> int:
        """Events not yet reported, if ``interval`` has passed since the last report."""
        if not self._pending or now - self._last < self.interval:
            return 0
        count, self._pending = self._pending, 0
        self._last = now
        return count
