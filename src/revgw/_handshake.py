"""The tunnel wire protocol, sans-IO: lines in, lines and verdicts out.

A tunnel connection opens with three short ASCII lines a person can watch
with ``nc``::

    gateway: REVGW/1 CHALLENGE nonce=9f2c...e1 heartbeat=5
    client:  REVGW/1 AUTH key=5d1a... tunnel=default client=laptop-41 hosts=- cnonce=77ab... mac=...
    gateway: REVGW/1 READY proof=c3d0...          (or: REVGW/1 DENIED <why>)

``DENIED`` means "these settings will never do" and the client stops;
``REVGW/1 BUSY <why>`` means "not now" (a connection limit, or this address
failed to authenticate too often) and the client backs off and dials again.
BUSY may come instead of the CHALLENGE or instead of the verdict; a client
that does not know the verb reads it as a broken handshake, and retries too.

The gateway speaks first so that a client pointed at the wrong port (an HTTP
server, an old version) learns so at once instead of hanging. ``mac`` is an
HMAC-SHA256 under the shared token of the gateway's fresh nonce and every
other field, so the token never crosses the wire and a recorded answer is
useless on a new connection. ``proof`` is the gateway's HMAC over the client's
nonce: a client never serves a gateway that cannot show it knows the token.
``key`` names the token without revealing it, so a gateway holding several
tokens knows which one to check. Two optional, signed fields declare who may
reach the tunnel (``_tokens.Access``): ``basic=`` salted credential hashes
(never a password) and ``cidr=`` allowed caller networks; a line without them
is what older clients send, and stays valid.

After READY the connection idles: the gateway sends ``PING``, the client
answers ``PONG``; ``START <caller>`` ends the line protocol and every later
byte belongs to the caller's stream.

A gateway that is stopping (SIGTERM) sends ``REVGW/1 DRAIN <why>`` on each
idle connection and closes it: the client re-dials, which behind a load
balancer reaches another gateway. A client that does not know the verb reads
an unexpected line, closes and re-dials too (with a warning in its log).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace

from ._errors import AccessDenied, GatewayBusy, ProtocolError

VERSION = b"REVGW/1"
MAX_LINE = 1024
MAX_HOSTS = 32

PING = b"PING\r\n"
PONG = b"PONG\r\n"

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"[a-z0-9*]([a-z0-9.-]{0,251}[a-z0-9])?")
_HEX = re.compile(r"[0-9a-f]{16,128}")
# access rules (optional AUTH fields): credential hashes and networks, checked in _tokens
_OPTIONAL = {"basic", "cidr", "kind", "port"}
_PORT = re.compile(r"auto|[1-9][0-9]{0,4}")
MAX_CREDENTIALS = 4
MAX_CIDRS = 16
_BASIC = re.compile(r"pbkdf2-sha256\$[0-9]{4,6}\$[0-9a-f]{8,64}\$[0-9a-f]{16,128}")
_CIDR = re.compile(r"[0-9a-f.:]{2,39}/[0-9]{1,3}")


class LineReader:
    """Split a byte stream into ``\\r\\n`` lines, refusing any longer than ``limit``.

    Whatever follows the last line taken stays in ``rest`` untouched: after
    ``START`` those are the caller's first bytes.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._buffer = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete line without its ``\\r\\n``, or None if none yet."""
        end = self._buffer.find(b"\r\n", 0, self._limit + 2)
        if end < 0:
            # A line of exactly ``limit`` bytes may wait here, CR and all, for its LF.
            over = len(self._buffer) - self._limit
            if over > 1 or (over == 1 and self._buffer[-1] != ord("\r")):
                preview = bytes(self._buffer[:40])
                raise ProtocolError(f"line longer than {self._limit} bytes: {preview!r}...")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def take_rest(self) -> bytes:
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def token_key(token: str) -> str:
    """A short public name for a token: lets the gateway pick which token to check."""
    return hashlib.sha256(b"revgw token key\n" + token.encode()).hexdigest()[:16]


def new_nonce() -> str:
    return secrets.token_hex(16)


def _mac(token: str, *parts: str) -> str:
    message = "\n".join(parts).encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def _fields(line: bytes, verb: bytes) -> dict[str, str]:
    """Check ``REVGW/1 <verb> ...`` and return its ``key=value`` fields."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"not a revgw line: {line[:60]!r}") from None
    words = text.split(" ")
    if len(words) < 2 or words[0] != VERSION.decode():
        raise ProtocolError(f"expected '{VERSION.decode()} {verb.decode()}', got {text[:60]!r}")
    if words[1] != verb.decode():
        raise ProtocolError(f"expected {verb.decode()}, got {text[:60]!r}")
    fields: dict[str, str] = {}
    for word in words[2:]:
        key, sep, value = word.partition("=")
        if not sep or not key or key in fields:
            raise ProtocolError(f"malformed field {word[:40]!r} in {verb.decode()} line")
        fields[key] = value
    return fields


# --- gateway -> client: the challenge ---------------------------------------


@dataclass(frozen=True)
class Challenge:
    nonce: str
    heartbeat: float

    def line(self) -> bytes:
        return b"%s CHALLENGE nonce=%s heartbeat=%s\r\n" % (
            VERSION,
            self.nonce.encode(),
            _number(self.heartbeat).encode(),
        )

    @classmethod
    def new(cls, heartbeat: float) -> Challenge:
        return cls(new_nonce(), heartbeat)


def parse_challenge(line: bytes) -> Challenge:
    """Parse the gateway's first line; a wrong peer gets a ProtocolError saying so.

    Raises GatewayBusy if the gateway turned the connection away for now.
    """
    _check_busy(line)
    if not line.startswith(VERSION + b" "):
        raise ProtocolError(
            f"this is not a revgw gateway tunnel port (it said {line[:60]!r}); "
            "point --gateway at the gateway's tunnel port (9001 by default)"
        )
    fields = _fields(line, b"CHALLENGE")
    nonce = fields.get("nonce", "")
    if not _HEX.fullmatch(nonce):
        raise ProtocolError("CHALLENGE without a valid nonce")
    try:
        heartbeat = float(fields.get("heartbeat", ""))
    except ValueError:
        raise ProtocolError("CHALLENGE without a valid heartbeat") from None
    if not 0 < heartbeat <= 3600:
        raise ProtocolError("CHALLENGE heartbeat out of range")
    return Challenge(nonce, heartbeat)


# --- client -> gateway: the answer ------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Who a tunnel connection says it is (proved by ``mac``)."""

    key: str
    tunnel: str
    client: str
    hosts: tuple[str, ...]
    cnonce: str
    mac: str
    # Optional access rules for callers (``_tokens.Access``): credential hashes and
    # networks. Absent from the line when empty, so older clients' lines stay valid.
    basic: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    # A raw TCP tunnel (``kind=tcp port=N|auto``); absent for HTTP tunnels. An
    # older gateway refuses these fields as malformed: TCP needs a new one.
    tcp_port: str = ""

    def _signed_part(self) -> str:
        hosts = ",".join(self.hosts) or "-"
        access = ""
        if self.basic:
            access += f" basic={','.join(self.basic)}"
        if self.cidrs:
            access += f" cidr={','.join(self.cidrs)}"
        if self.tcp_port:
            access += f" kind=tcp port={self.tcp_port}"
        return (
            f"key={self.key} tunnel={self.tunnel} client={self.client} "
            f"hosts={hosts}{access} cnonce={self.cnonce}"
        )

    def line(self) -> bytes:
        return f"REVGW/1 AUTH {self._signed_part()} mac={self.mac}\r\n".encode()


def check_identity(tunnel: str, client: str, hosts: tuple[str, ...]) -> None:
    """Raise ValueError naming the first of tunnel, client id or hosts that is unusable."""
    if not _NAME.fullmatch(tunnel):
        raise ValueError(f"tunnel name {tunnel!r} must be 1-63 of a-z 0-9 . _ -")
    if not _CLIENT_ID.fullmatch(client):
        raise ValueError(f"client id {client!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    if len(hosts) > MAX_HOSTS:
        raise ValueError(f"at most {MAX_HOSTS} hosts per tunnel")
    for host in hosts:
        if not _HOST.fullmatch(host):
            raise ValueError(f"host {host!r} is not a lower-case host name")
        if "*" in host and (not host.startswith("*.") or "*" in host[1:] or len(host) < 3):
            raise ValueError(f"host {host!r}: a wildcard is written *.example.com")


def make_hello(
    token: str,
    challenge: Challenge,
    tunnel: str,
    client: str,
    hosts: tuple[str, ...],
    *,
    basic: tuple[str, ...] = (),
    cidrs: tuple[str, ...] = (),
    tcp_port: str = "",
) -> Hello:
    unsigned = Hello(
        token_key(token), tunnel, client, hosts, new_nonce(), "", basic, cidrs, tcp_port
    )
    mac = _mac(token, "auth", challenge.nonce, unsigned._signed_part())
    return replace(unsigned, mac=mac)


def parse_hello(line: bytes) -> Hello:
    """Parse the client's AUTH line; anything malformed is a ProtocolError."""
    fields = _fields(line, b"AUTH")
    expected = {"key", "tunnel", "client", "hosts", "cnonce", "mac"}
    if not expected <= set(fields) <= expected | _OPTIONAL:
        raise ProtocolError(
            f"AUTH needs exactly the fields {', '.join(sorted(expected))}"
            f" (and optionally {', '.join(sorted(_OPTIONAL))})"
        )
    basic = _list(fields, "basic", _BASIC, MAX_CREDENTIALS)
    cidrs = _list(fields, "cidr", _CIDR, MAX_CIDRS)
    hosts = () if fields["hosts"] == "-" else tuple(fields["hosts"].split(","))
    tcp_port = fields.get("port", "")
    if ("kind" in fields or tcp_port) and (
        fields.get("kind") != "tcp" or not _PORT.fullmatch(tcp_port)
    ):
        raise ProtocolError("AUTH fields kind/port must be kind=tcp port=N|auto")
    try:
        check_identity(fields["tunnel"], fields["client"], hosts)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    for name in ("key", "cnonce", "mac"):
        if not _HEX.fullmatch(fields[name]):
            raise ProtocolError(f"AUTH field {name} is not hex")
    return Hello(
        fields["key"],
        fields["tunnel"],
        fields["client"],
        hosts,
        fields["cnonce"],
        fields["mac"],
        basic,
        cidrs,
        tcp_port,
    )


def _list(
    fields: dict[str, str], name: str, pattern: re.Pattern[str], limit: int
) -> tuple[str, ...]:
    """An optional comma-separated AUTH field, each item matching ``pattern``."""
    if name not in fields:
        return ()
    items = tuple(fields[name].split(","))
    if len(items) > limit or not all(pattern.fullmatch(item) for item in items):
        raise ProtocolError(f"AUTH field {name} is malformed (at most {limit} items)")
    return items


def verify_hello(token: str, challenge: Challenge, hello: Hello) -> None:
    """Raise AccessDenied unless ``hello`` was signed with ``token`` for this challenge."""
    if hello.key != token_key(token):
        raise AccessDenied("unknown token")
    expected = _mac(token, "auth", challenge.nonce, hello._signed_part())
    if not hmac.compare_digest(expected, hello.mac):
        raise AccessDenied("bad token signature")


# --- gateway -> client: the verdict -----------------------------------------


def ready_line(token: str, challenge: Challenge, hello: Hello, port: int = 0) -> bytes:
    """READY with the proof; for a TCP tunnel also ``port=N``, its public port."""
    proof = _mac(token, "ready", hello.cnonce, challenge.nonce)
    extra = b" port=%d" % port if port else b""
    return b"%s READY proof=%s%s\r\n" % (VERSION, proof.encode(), extra)


def denied_line(reason: str) -> bytes:
    return b"%s DENIED %s\r\n" % (VERSION, _clean(reason))


def busy_line(reason: str) -> bytes:
    """Turn a connection away for now: the client retries later (GatewayBusy)."""
    return b"%s BUSY %s\r\n" % (VERSION, _clean(reason))


def _clean(reason: str) -> bytes:
    return reason.encode("ascii", "replace").replace(b"\r", b" ").replace(b"\n", b" ")[:200]


def _check_busy(line: bytes) -> None:
    if line.startswith(VERSION + b" BUSY"):
        reason = line[len(VERSION) + 6 :].decode("ascii", "replace").strip()
        raise GatewayBusy(f"the gateway is busy: {reason or 'try again later'}")


def check_verdict(token: str, challenge: Challenge, hello: Hello, line: bytes) -> int:
    """Accept a READY that proves the gateway holds the token; raise otherwise.

    Returns the public TCP port READY named (0 if none).
    Raises AccessDenied on DENIED (do not retry), GatewayBusy on BUSY (retry
    later), ProtocolError on anything else.
    """
    _check_busy(line)
    if line.startswith(VERSION + b" DENIED"):
        reason = line[len(VERSION) + 8 :].decode("ascii", "replace").strip()
        raise AccessDenied(reason or "denied")
    fields = _fields(line, b"READY")
    expected = _mac(token, "ready", hello.cnonce, challenge.nonce)
    if not hmac.compare_digest(expected, fields.get("proof", "")):
        raise ProtocolError("the gateway could not prove it knows the token")
    port = fields.get("port", "0")
    return int(port) if port.isdigit() and int(port) <= 65535 else 0


# --- the idle phase -----------------------------------------------------------


def start_line(caller: str, public: str = "") -> bytes:
    """``START <caller>``; a TCP tunnel adds the public address the caller dialled."""
    text = f"{caller} {public}" if public else caller
    return b"START %s\r\n" % text.encode("ascii", "replace")


def parse_start(line: bytes) -> tuple[str, str]:
    """The caller's address and (TCP tunnels) the public one from a START line."""
    words = line[6:].decode("ascii", "replace").split(" ")
    return (words[0] or "unknown"), (words[1] if len(words) > 1 else "")


def drain_line(reason: str = "the gateway is stopping") -> bytes:
    """Sent on an idle connection before closing it: re-dial (elsewhere), do not back off."""
    return b"%s DRAIN %s\r\n" % (VERSION, _clean(reason))


def is_drain(line: bytes) -> bool:
    return line == VERSION + b" DRAIN" or line.startswith(VERSION + b" DRAIN ")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
