"""revgw's exceptions: one tree, each HTTP-facing leaf knowing its status.

Errors from anyio, asyncio and the OS are turned into these at the boundary
where they happen (``raise ... from exc``), so callers only ever handle ours.
"""

from __future__ import annotations


class RevgwError(Exception):
    """Base of every error revgw raises on purpose."""


class ConfigError(RevgwError, ValueError):
    """A setting has a value revgw cannot use (bad address, pool < 1, ...)."""


# --- the tunnel protocol ---------------------------------------------------


class ProtocolError(RevgwError):
    """The peer on a tunnel connection broke the revgw wire protocol."""


class AccessDenied(RevgwError):
    """The gateway refused this client's handshake (wrong token, taken host, ...).

    Retrying with the same settings cannot help, so the client stops.
    """


class GatewayBusy(ProtocolError):
    """The gateway turned this connection away for now (``REVGW/1 BUSY``): a limit was hit.

    Unlike AccessDenied, waiting can help, so the client backs off and dials
    again. A ProtocolError subclass, so that every path that already retries
    on a broken handshake (and older code catching ProtocolError) retries on it.
    """


# --- failures an HTTP caller sees ------------------------------------------


class HTTPError(RevgwError):
    """A failure the gateway answers with an HTTP status.

    ``code`` goes into the ``X-Revgw-Error`` header so that programs can tell
    failures apart without parsing the text; ``str(error)`` is the body.
    """

    status: int = 500
    code: str = "internal-error"
    retry_after: int | None = None
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers (WWW-Authenticate)


class BadRequest(HTTPError):
    status, code = 400, "bad-request"


class Unauthorized(HTTPError):
    """The tunnel wants Basic credentials the caller did not send (or got wrong)."""

    status, code = 401, "unauthorized"

    def __init__(self, message: str, realm: str) -> None:
        super().__init__(message)
        self.headers = (("WWW-Authenticate", f'Basic realm="{realm}", charset="UTF-8"'),)


class Forbidden(HTTPError):
    """The caller's address is outside every network the tunnel allows."""

    status, code = 403, "forbidden"


class NoTunnel(HTTPError):
    status, code = 404, "no-tunnel"


class BodyTooLarge(HTTPError):
    """The request body is over ``--max-body-bytes``; the connection closes after the answer."""

    status, code = 413, "body-too-large"


class HeadersTooLarge(HTTPError):
    status, code = 431, "headers-too-large"


class UnsupportedTransferCoding(BadRequest):
    """A body framing revgw cannot pass on safely (RFC 9112 6.1: answer 501)."""

    status, code = 501, "unsupported-transfer-coding"


class UpstreamUnreachable(HTTPError):
    status, code = 502, "upstream-unreachable"


class BadUpstreamResponse(HTTPError):
    status, code = 502, "bad-upstream-response"


class TunnelOffline(HTTPError):
    status, code, retry_after = 503, "tunnel-offline", 5


class TooManyConnections(HTTPError):
    """The gateway already holds ``--max-callers`` public connections."""

    status, code, retry_after = 503, "too-many-connections", 1


class PoolTimeout(HTTPError):
    status, code, retry_after = 503, "no-free-connection", 1


class UpstreamTimeout(HTTPError):
    status, code = 504, "upstream-timeout"
