"""The private demo server that revgw tunnels to: ``revgw server``."""

from .server import Server, ServerSettings, serve_forever

__all__ = ["Server", "ServerSettings", "serve_forever"]
