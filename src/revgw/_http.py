"""HTTP/1.1 framing, sans-IO: httptools parses, these classes decide.

The gateway never needs a full HTTP model. It needs to know, for each request,
where it is going (``Host``), how its body is framed and whether the caller
wants to keep the connection; and for each response, whether its head is valid
HTTP (else ``502``), when it ends, and whether the tunnel connection may carry
another request afterwards. Bodies pass through as bytes.

httptools calls back into these objects; the callbacks only record. Nothing
here touches a socket, so tests feed bytes whole, byte by byte, or as garbage.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

from ._errors import (
    BadRequest,
    BadUpstreamResponse,
    HeadersTooLarge,
    HTTPError,
    UnsupportedTransferCoding,
)

MAX_HEAD_BYTES = 32 * 1024
MAX_RESPONSE_HEAD_BYTES = 64 * 1024

# Hop-by-hop headers (RFC 9110 7.6.1) are about one connection, not the
# message: the gateway drops them and speaks for its own two connections.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# The gateway says who called; a caller cannot say it for itself (unless it
# is a trusted proxy: see ``TrustedProxies``).
FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded"}
)

# Smuggling guards (RFC 9112 11.2). llhttp's strict default (httptools >= 0.6.1;
# revgw never turns on its "dangerous leniencies") refuses obs-fold, bare CR or
# LF, bad chunk sizes and malformed Content-Length; tests/test_hygiene.py pins
# that. What a callback can see is checked again here, so that a more lenient
# parser still cannot make two servers disagree on where a request ends.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
_DIGITS = re.compile(rb"[0-9]{1,18}")  # 18 digits: far past any body, never overflows
_BAD_VALUE_BYTES = re.compile(rb"[\x00\r\n]")
# Headers the request reader looks at; any other passes through untouched.
# ("Close" too: ``Connection: close`` would name it as hop-by-hop.)
_NOTED = (
    frozenset({b"host", b"content-length", b"transfer-encoding", b"close"})
    | HOP_BY_HOP
    | FORWARDING
)


# The events are dataclasses for their == and repr (tests compare them), with
# an __init__ of their own: mypyc compiles that one, but not the one the
# dataclass decorator would write (a third of a microsecond per request).


@dataclass(slots=True, init=False)
class RequestHead:
    method: bytes
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    host: str
    keep_alive: bool
    upgrade: bool
    chunked: bool
    content_length: int | None
    # The head as it came, without its Connection line and final empty line,
    # when it came whole in one read with nothing around it and had nothing
    # else to drop: the common case, rendered by appending to this.
    raw: bytes | None = field(compare=False, repr=False)

    def __init__(  # noqa: PLR0917 - one field each, and one call site
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        host: str,
        keep_alive: bool,
        upgrade: bool,
        chunked: bool,
        content_length: int | None,
        raw: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.host = host
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.chunked = chunked
        self.content_length = content_length
        self.raw = raw

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass(slots=True, init=False)
class Body:
    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True)
class EndOfMessage:
    pass


@dataclass(slots=True, init=False)
class Upgraded:
    """Bytes after an upgrade request's head: no longer HTTP, passed on raw."""

    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


RequestEvent = RequestHead | Body | EndOfMessage | Upgraded
END = EndOfMessage()


@functools.lru_cache(maxsize=1024)  # a gateway sees a few Host values over and over
def _split_host(value: bytes) -> str:
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rpartition(":")[0] if ":" in host else host


class RequestReader:
    """Turn a caller's bytes into request events; raise BadRequest or HeadersTooLarge.

    One reader serves one caller connection, so pipelined requests come out in
    order. After an upgrade request every later byte comes out as ``Upgraded``.
    """

    def __init__(self, max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._max_head = max_head_bytes
        self._events: list[RequestEvent] = []
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0  # sizes of the parts parsed so far (exact)
        self._head_raw = 0  # raw bytes of a head spanning several feeds
        self._consumed = 0  # bytes of this feed known to belong to earlier parts
        self._begin_mark: int | None = None  # _consumed when this feed began a head
        self._head_at: int | None = None  # index in this feed's events of the latest head
        self._in_head = False
        self._in_message = False
        self._upgraded = False
        self._plain = False  # the head just parsed can go on as it came (see RequestHead.raw)
        self._connection_name = b""  # ... once its Connection line, so named, is cut out

    def close(self) -> None:
        """Let go of the parser: it and this reader point at each other, a cycle that
        only the garbage collector would free (a collection every few dozen callers)."""
        self._parser = _CLOSED_PARSER

    @property
    def between_messages(self) -> bool:
        """True when every request begun so far has ended: no byte of one is pending."""
        return not self._in_message and not self._upgraded

    @property
    def parsed_before_error(self) -> list[RequestEvent]:
        """After ``feed`` raised: the events of that read parsed before the error.

        A good request pipelined ahead of garbage in one read is still served.
        """
        return self._events

    def feed(self, data: bytes) -> list[RequestEvent]:
        if self._upgraded:
            return [Upgraded(data)]
        events = self._new_read()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded = True
            offset = exc.args[0]
            events.append(Upgraded(data[offset:]))
        except httptools.HttpParserError as exc:  # HttpParserCallbackError included
            if self._in_message and self._head_at is not None:
                # The bad message's own head came in this read: it must not be
                # forwarded either (only complete requests before it are served).
                del events[self._head_at :]
            if isinstance(exc.__context__, HTTPError):
                raise exc.__context__ from None
            raise BadRequest(f"malformed request: {exc}") from None
        if (
            len(events) == 2
            and events[1] is END
            and self._begin_mark == 0
            # The read is the head and nothing else: its first empty line is its
            # last bytes (empty lines after a request are skipped by the parser,
            # and kept, they would end the head before the X-Forwarded-* lines).
            and data.find(b"\r\n\r\n") == len(data) - 4
        ):
            head = events[0]
            if isinstance(head, RequestHead) and self._plain and data.startswith(head.method):
                # (a head after empty lines does not start so)
                head.raw = _without_line(data[:-4], self._connection_name)
        if self._in_head:
            # A head still arriving; it may hold one endless header line that
            # ``on_header`` has not seen yet. Count its raw bytes: all of ``data``
            # if it began earlier, else what follows the parts already known
            # (over-subtracting those only makes this guard a little lenient).
            if self._begin_mark is None:
                self._head_raw += len(data)
            else:
                self._head_raw = len(data) - self._begin_mark
            if self._head_raw > self._max_head + 4096:
                raise HeadersTooLarge(f"request head larger than {self._max_head} bytes")
        return events

    def _new_read(self) -> list[RequestEvent]:
        """Forget what the callbacks recorded about the last read; the new read's events.

        A method of its own so that mypy does not carry the values set here
        past the parser's callbacks, which change them (mypyc, compiling this
        module, would check them against the values set here, and fail).
        """
        self._consumed = 0
        self._begin_mark = None
        self._head_at = None
        self._events = []
        return self._events

    # httptools callbacks: record only.

    def on_message_begin(self) -> None:
        self._in_message = True
        self._begin_mark = self._consumed
        self._head_at = None
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._head_raw = 0
        self._in_head = True
        self._plain = False
        self._connection_name = b""

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._max_head:
            self._too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head:
            self._too_large()
        self._headers.append((name, value))  # checked all at once: ``check_headers``

    def _too_large(self) -> None:
        raise HeadersTooLarge(f"request head larger than {self._max_head} bytes")

    def on_headers_complete(self) -> None:
        self._in_head = False
        check_values(self._headers)  # (and each name in the loop below: ``_name_kind``)
        parser = self._parser
        method: bytes = parser.get_method()
        if method == b"CONNECT":
            raise BadRequest("CONNECT is not supported: revgw is a reverse proxy")
        version: str = parser.get_http_version()
        self._consumed += self._head_size + 32  # + request line and CRLFs, roughly
        # One pass over the headers picks out the few that routing and framing
        # need; most requests have none but Host, and leave the loop at once.
        hosts: list[bytes] = []
        lengths: list[bytes] = []
        encodings: list[bytes] = []
        plain = True  # nothing to drop or rewrite but Connection: close|keep-alive
        for name, value in self._headers:
            lower = _name_kind(name)
            if not lower:
                continue
            if lower == b"host":
                hosts.append(value)
            elif lower == b"content-length":
                lengths.append(value)
            elif lower == b"transfer-encoding":
                encodings.append(value)
                plain = False
            elif (
                lower == b"connection"
                and not self._connection_name
                and value.lower() in (b"close", b"keep-alive")
            ):
                self._connection_name = name
            else:
                plain = False
        if len(hosts) > 1:
            raise BadRequest("more than one Host header")  # RFC 9112 3.2
        host = hosts[0] if hosts else b""
        chunked, content_length = (
            _framing(version, lengths, encodings) if lengths or encodings else (False, None)
        )
        if not host and version == "1.1":
            raise BadRequest("HTTP/1.1 request without a Host header")
        upgrade: bool = parser.should_upgrade()
        self._plain = plain and not upgrade
        self._head_at = len(self._events)
        self._events.append(
            RequestHead(  # (positional: a little cheaper, once per request)
                method,
                self._url,
                version,
                self._headers,
                _split_host(host) if host else "",
                parser.should_keep_alive(),
                upgrade,
                chunked,
                content_length,
            )
        )

    def on_body(self, body: bytes) -> None:
        self._consumed += len(body)
        self._events.append(Body(bytes(body)))

    def on_message_complete(self) -> None:
        self._in_message = False
        self._events.append(END)


def _without_line(head: bytes, name: bytes) -> bytes:
    """``head`` without its header line called ``name`` exactly (if ``name``: there is one).

    A name is followed by its colon (no space: that is refused), and a CR LF
    cannot be in a value, so the line is found by its start alone.
    """
    if not name:
        return head
    start = head.find(b"\r\n" + name + b":")
    end = head.find(b"\r\n", start + 2)
    return head[:start] + head[end:] if end >= 0 else head[:start]


def check_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """Raise BadRequest unless every name is a token and no value holds CR, LF or NUL."""
    for name, _ in headers:
        _name_kind(name)
    check_values(headers)


def check_values(headers: list[tuple[bytes, bytes]]) -> None:
    """Raise BadRequest if a value holds CR, LF or NUL (the names: ``_name_kind``).

    More than one value is checked all at once (joined in C): a bad byte in
    any value is one in the values joined, and a browser sends ten or more.
    """
    if len(headers) > 1 and not _BAD_VALUE_BYTES.search(b"".join([v for _, v in headers])):
        return
    for name, value in headers:
        if _BAD_VALUE_BYTES.search(value):
            raise BadRequest(
                f"header {name.decode('latin-1')} has a CR, LF or NUL in its value "
                "(bare line ending or obs-fold)"
            )


# Header names seen before, as they came, and what the reader makes of each:
# its lowercase form if it is one of _NOTED, else b"". Being here means it was
# checked to be a token. Clients send the same few names over and over, so a
# lookup here saves a regex and a lowercasing per header. Bounded (a caller
# may invent names): past MAX_NAMES, or longer than MAX_NAME_BYTES, a name is
# checked every time, as before.
_NAMES: dict[bytes, bytes] = {}
MAX_NAMES = 4096
MAX_NAME_BYTES = 64


def _name_kind(name: bytes) -> bytes:
    """What the reader makes of header ``name`` (see ``_NAMES``); BadRequest if no token."""
    kind = _NAMES.get(name)
    if kind is not None:
        return kind
    if not _TOKEN.fullmatch(name):
        # Whitespace before the colon, or a line folded onto the previous one.
        raise BadRequest(f"invalid header name {name[:40]!r}")
    lower = name.lower()
    kind = lower if lower in _NOTED else b""
    if len(_NAMES) < MAX_NAMES and len(name) <= MAX_NAME_BYTES:
        _NAMES[name] = kind
    return kind


def _framing(version: str, lengths: list[bytes], encodings: list[bytes]) -> tuple[bool, int | None]:
    """(chunked, Content-Length) of a request head; BadRequest if ambiguous."""
    if lengths and encodings:
        raise BadRequest("request has both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        # Even equal values: one is the only unambiguous count (RFC 9112 6.3).
        raise BadRequest("more than one Content-Length header")
    if len(encodings) > 1:
        raise BadRequest("more than one Transfer-Encoding header")
    if encodings:
        if version == "1.0":
            # An HTTP/1.0 server downstream would not know chunked (RFC 9112 6.1).
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        codings = encodings[0].strip().lower()
        if not codings.endswith(b"chunked"):
            # RFC 9112 6.3: the body's length cannot be known.
            raise BadRequest("Transfer-Encoding must end with chunked")
        if codings != b"chunked":
            raise UnsupportedTransferCoding(
                f"Transfer-Encoding {encodings[0].decode('latin-1')!r} is not supported; "
                "send the body with Content-Length or plain chunked"
            )
        return True, None
    if lengths:
        digits = lengths[0].strip(b" \t")
        if not _DIGITS.fullmatch(digits):
            raise BadRequest(
                f"Content-Length {lengths[0][:30]!r} is not a plain non-negative integer"
            )
        return False, int(digits)
    return False, None


_CLOSED_PARSER = httptools.HttpRequestParser(object())  # what a closed reader is left with


class TrustedProxies:
    """The caller addresses whose X-Forwarded-* headers are believed.

    A proxy in front of the gateway already says who its caller was; for a
    caller inside one of these networks the gateway keeps that and appends
    the proxy's own address, instead of replacing it. Parse once with ``of``.
    """

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(c.strip()) for c in cidrs)

    @staticmethod
    @functools.cache
    def of(cidrs: tuple[str, ...]) -> TrustedProxies:
        """The parsed list for a settings value, parsed only the first time it is asked."""
        return TrustedProxies(cidrs)

    def __contains__(self, ip: object) -> bool:
        if not self.networks or not isinstance(ip, str):
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False  # "unknown", a Unix socket path: never trusted
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def render_request_head(
    head: RequestHead, caller_ip: str, proto: str = "http", trusted: bool = False
) -> bytes:
    """The head the gateway sends on: hop-by-hop headers dropped, X-Forwarded-* set.

    ``trusted``: the caller is a trusted proxy, so its X-Forwarded-Proto/-Host
    (and Forwarded) pass on and its X-Forwarded-For gets ``caller_ip`` appended.
    """
    raw = head.raw
    if raw is not None:
        # The head as it came (nothing in it to drop), plus our headers:
        # the same bytes as the general way below, for a fraction of the work.
        end = b"\r\nConnection: close" if head.version == "1.0" else b""
        end += b"\r\nX-Forwarded-For: " + caller_ip.encode()
        if head.host:
            end += b"\r\nX-Forwarded-Host: " + head.host.encode()
        return raw + end + b"\r\nX-Forwarded-Proto: " + proto.encode() + b"\r\n\r\n"
    named_in_connection: set[bytes] = set()
    for name, value in head.headers:
        if name.lower() == b"connection":
            named_in_connection.update(v.strip().lower() for v in value.split(b","))
    lines = [b"%s %s HTTP/%s" % (head.method, head.target, head.version.encode())]
    forwarded_for: list[bytes] = []
    kept: set[bytes] = set()
    for name, value in head.headers:
        lower = name.lower()
        if lower in FORWARDING and trusted and lower not in named_in_connection:
            if lower == b"x-forwarded-for":
                forwarded_for.append(value.strip(b" \t"))
            else:
                kept.add(lower)
                lines.append(name + b": " + value)
            continue
        if lower in HOP_BY_HOP or lower in FORWARDING or lower in named_in_connection:
            if lower == b"upgrade" and head.upgrade:
                lines.append(b"Upgrade: " + value)
            continue
        lines.append(name + b": " + value)
    if head.upgrade:
        lines.append(b"Connection: upgrade")
    elif head.version == "1.0":
        lines.append(b"Connection: close")
    if head.chunked:
        lines.append(b"Transfer-Encoding: chunked")
    forwarded_for.append(caller_ip.encode())
    lines.append(b"X-Forwarded-For: " + b", ".join(v for v in forwarded_for if v))
    if head.host and b"x-forwarded-host" not in kept:
        lines.append(b"X-Forwarded-Host: " + head.host.encode())
    if b"x-forwarded-proto" not in kept:
        lines.append(b"X-Forwarded-Proto: " + proto.encode())
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class ResponseState(enum.Enum):
    HEAD = "head"  # no final status line and headers yet: nothing forwarded
    BODY = "body"  # forwarding the body
    DONE = "done"  # the response has ended
    UPGRADED = "upgraded"  # 101: every later byte is a raw stream


class ResponseReader:
    """Frame the responses on one tunnel connection, one request at a time.

    ``expect`` arms it for the response to the next request; ``feed`` returns
    the bytes to pass to the caller now. Until the final head is complete it
    returns nothing (a garbage answer can still become a 502); 1xx interim
    responses are passed on at once, so ``100-continue`` works. httptools is
    not told the request method, so a response to ``HEAD`` is ended here, at
    its head. Bytes after the end of the response are not the caller's: they
    are cut off (for a chunked body, whose raw length httptools does not
    report, ``trailing_garbage`` tells the exchange to close the caller's
    connection instead, so no stray byte can be read as its next response).

    A warm connection keeps its reader, and the parser too when the last
    response ended where httptools knows it ended: a parser per request cost
    an allocation and, since parser and reader point at each other, a garbage
    collection now and then.
    """

    def __init__(
        self,
        request_method: bytes = b"GET",
        max_head_bytes: int = MAX_RESPONSE_HEAD_BYTES,
        close_caller: bool = False,
    ) -> None:
        self._max_head = max_head_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._parser_clean = True  # between messages: fit for the next response
        self.expect(request_method, close_caller)

    def expect(self, request_method: bytes, close_caller: bool = False) -> None:
        """Get ready for the response to a ``request_method`` request."""
        if not self._parser_clean:
            self._parser = httptools.HttpResponseParser(self)
        self._close_caller = close_caller  # rewrite the final head to say Connection: close
        self._is_head_request = request_method == b"HEAD"
        self._held = b""  # the head so far (and what came with it)
        self._interims = 0  # complete 1xx heads still in _held
        self._final_at = 0  # where the final head starts in _held (after any 1xx)
        self._chunked = False
        self._stray_sent = False  # bytes after the response's end went to the caller
        self._body_in_feed = 0
        self._garbage_in_feed = False
        self.state = ResponseState.HEAD
        self.status = 0
        self.keep_alive = False
        self.close_delimited = False
        self.trailing_garbage = False
        self.sent_bytes = 0

    @property
    def reusable(self) -> bool:
        """May the connection carry another request once this response is done?"""
        return self.state is ResponseState.DONE and self.keep_alive and not self.trailing_garbage

    def close_caller(self) -> None:
        """Say ``Connection: close`` in the final head, if it has not gone out yet."""
        self._close_caller = True

    @property
    def caller_may_continue(self) -> bool:
        """False when stray bytes may have reached the caller after the response."""
        return not self._stray_sent

    def feed(self, data: bytes) -> bytes:
        state = self.state
        if state is ResponseState.UPGRADED:
            return data
        if state is ResponseState.DONE:
            self.trailing_garbage = True
            return b""
        if state is ResponseState.HEAD:
            # Kept whole until the final head is in; the callbacks read it.
            self._held = self._held + data if self._held else _from_status_line(data)
        self._body_in_feed = 0
        self._garbage_in_feed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.state = ResponseState.UPGRADED
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, BadUpstreamResponse):
                raise exc.__context__ from None
            if self.state is ResponseState.DONE:
                self._garbage()
            else:
                raise BadUpstreamResponse(
                    f"the private server's answer is not valid HTTP ({exc})"
                ) from None
        head_len = 0
        if state is ResponseState.HEAD:
            if self.state is ResponseState.HEAD:
                out = self._release_interims()
                self._check_head_size(len(self._held))
                return out
            data, self._held = self._held, b""
            head_len = data.index(b"\r\n\r\n", self._final_at) + 4
            self._check_head_size(head_len)
            if self.state is ResponseState.BODY or self._garbage_in_feed:
                # Framing matters only for a body still to come or bytes after
                # the end; a response done in one read (the common case) skips it.
                self._read_framing(data[self._final_at : head_len].lower())
        if self._garbage_in_feed and self.state is ResponseState.DONE:
            if self._chunked:
                self._stray_sent = True  # its raw length is unknown: cannot cut exactly
            else:
                data = data[: head_len + self._body_in_feed]
        if head_len and self._close_caller:
            start = _head_end(data, self._interims) if self._interims else 0
            data = data[:start] + _saying_close(data[start:head_len]) + data[head_len:]
        self.sent_bytes += len(data)
        return data

    def _check_head_size(self, size: int) -> None:
        if size > self._max_head:
            raise BadUpstreamResponse(
                f"the private server's response head is over {self._max_head} bytes"
            )

    def _release_interims(self) -> bytes:
        """Pass on complete 1xx heads; keep the start of the final head back."""
        if not self._interims:
            return b""
        end = _head_end(self._held, self._interims)
        self._interims = 0
        out = self._held[:end]
        self._held = _from_status_line(self._held[end:])
        return out

    def feed_eof(self) -> None:
        """The server closed its side: fine after a close-delimited body, else an error."""
        if self.state is ResponseState.BODY and self.close_delimited:
            self.state = ResponseState.DONE
        elif self.state in (ResponseState.HEAD, ResponseState.BODY):
            where = "before its response head" if self.state is ResponseState.HEAD else "mid-body"
            raise BadUpstreamResponse(f"the private server closed the connection {where}")

    def _garbage(self) -> None:
        self.trailing_garbage = True
        self._garbage_in_feed = True

    # httptools callbacks: record only. There is no on_header: a callback per
    # header line cost more than reading the two framing headers off the head.

    def on_message_begin(self) -> None:
        self._parser_clean = False
        if self.state is ResponseState.DONE:
            self._garbage()

    def on_headers_complete(self) -> None:
        if self.state is ResponseState.DONE:
            return
        status: int = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interims += 1  # pass it on, keep waiting for the final one
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        if self._interims:
            at = self._final_at = _head_end(self._held, self._interims)
            self._held = self._held[:at] + _from_status_line(self._held[at:])
        self.state = ResponseState.DONE if self._is_head_request else ResponseState.BODY

    def _read_framing(self, head: bytes) -> None:
        """How the body is framed, from the final head (lowercased, without its last CRLF)."""
        coded = b"\r\ntransfer-encoding:" in head
        self._chunked = coded and _CHUNKED.search(head) is not None
        framed = coded or b"\r\ncontent-length:" in head
        self.close_delimited = not framed and self.status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if self.state is ResponseState.DONE:
            self._garbage()
        else:
            self._body_in_feed += len(body)

    def on_message_complete(self) -> None:
        if self.state is ResponseState.BODY:
            self.state = ResponseState.DONE
            self._parser_clean = True


_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked")  # in a lowercased head
_CONNECTION_LINES = re.compile(rb"\r\n(?:connection|keep-alive)[ \t]*:[^\r\n]*", re.IGNORECASE)


def _saying_close(head: bytes) -> bytes:
    """``head`` with its Connection and Keep-Alive headers replaced by ``Connection: close``."""
    return _CONNECTION_LINES.sub(b"", head[:-4]) + b"\r\nConnection: close\r\n\r\n"


def _from_status_line(data: bytes) -> bytes:
    """``data`` without the empty lines before a status line.

    The parser skips them; passed on, they would come before the caller's
    status line (and the Connection: close rewrite would look for the head in
    the wrong place).
    """
    return data.lstrip(b"\r\n") if data and data[0] in (10, 13) else data  # CR, LF


def _head_end(buffer: bytes, count: int) -> int:
    """Where the ``count``-th head in ``buffer`` ends (heads end at an empty line)."""
    end = 0
    for _ in range(count):
        end = buffer.index(b"\r\n\r\n", end) + 4
    return end


def error_response(error: HTTPError, keep_alive: bool) -> bytes:
    """A complete plain-text response saying what failed; ``X-Revgw-Error`` names it."""
    body = (str(error).strip() + "\n").encode()
    reason = HTTPStatus(error.status).phrase.encode()
    lines = [
        b"HTTP/1.1 %d %s" % (error.status, reason),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"X-Revgw-Error: " + error.code.encode(),
    ]
    if error.retry_after is not None:
        lines.append(b"Retry-After: %d" % error.retry_after)
    for name, value in error.headers:  # e.g. WWW-Authenticate on a 401
        lines.append(f"{name}: {value}".encode("latin-1"))
    lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
