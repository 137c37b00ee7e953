"""The demo caller that requests through the gateway: ``revgw producer``."""

from .producer import ProducerSettings, Result, fetch, run

__all__ = ["ProducerSettings", "Result", "fetch", "run"]
