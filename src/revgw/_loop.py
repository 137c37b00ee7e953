"""Which event loop the CLI runs on: uvloop where it installs, else asyncio's.

uvloop speeds up connection set-up (accepting, dialling), which is most of
a tunnel's per-request cost. ``REVGW_LOOP=asyncio`` opts out.
"""

from __future__ import annotations

import importlib.util
import os


def backend_options() -> dict[str, bool]:
    choice = os.environ.get("REVGW_LOOP", "auto").lower()
    if choice == "asyncio":
        return {"use_uvloop": False}
    available = importlib.util.find_spec("uvloop") is not None
    return {"use_uvloop": available}
