"""The tunnel handshake, sans-IO: lines in, lines and verdicts out.

These tests play both ends of a tunnel connection with plain function calls:
the gateway's CHALLENGE, the client's AUTH, the gateway's READY or DENIED.
No sockets are opened.
"""

from __future__ import annotations

import base64
import hashlib
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revgw._errors import AccessDenied, ProtocolError
from revgw._handshake import (
    MAX_HOSTS,
    MAX_LINE,
    PING,
    PONG,
    VERSION,
    Challenge,
    Hello,
    LineReader,
    check_identity,
    check_verdict,
    denied_line,
    make_hello,
    parse_challenge,
    parse_hello,
    ready_line,
    start_line,
    token_key,
    verify_hello,
)

TOKEN = "correct horse battery staple"
OTHER_TOKEN = "incorrect donkey battery staple"
HOSTS = ("app.example.com", "*.dev.example.com")

PROPERTY = settings(max_examples=200, deadline=None)


def strip(line: bytes) -> bytes:
    """What LineReader hands the other side: the line without its CRLF."""
    assert line.endswith(b"\r\n")
    assert b"\r" not in line[:-2] and b"\n" not in line[:-2]
    return line[:-2]


def handshake(
    token: str = TOKEN,
    tunnel: str = "default",
    client: str = "laptop-41",
    hosts: tuple[str, ...] = HOSTS,
    heartbeat: float = 5,
) -> tuple[Challenge, Hello, bytes]:
    """Run one handshake over the wire format; return (challenge, hello as parsed, AUTH line)."""
    challenge = Challenge.new(heartbeat)
    seen = parse_challenge(strip(challenge.line()))
    auth = make_hello(token, seen, tunnel, client, hosts).line()
    return challenge, parse_hello(strip(auth)), auth


# --- happy path ---------------------------------------------------------------


def test_challenge_round_trips() -> None:
    challenge = Challenge.new(5)
    line = challenge.line()
    assert line.startswith(VERSION + b" CHALLENGE ")
    assert line.endswith(b"\r\n")
    parsed = parse_challenge(line.rstrip(b"\r\n"))
    assert parsed == challenge
    assert parsed.heartbeat == 5.0


@pytest.mark.parametrize("heartbeat", [0.5, 1, 2.25, 30, 3600])
def test_challenge_heartbeat_round_trips(heartbeat: float) -> None:
    parsed = parse_challenge(strip(Challenge.new(heartbeat).line()))
    assert parsed.heartbeat == heartbeat


def test_challenges_use_fresh_nonces() -> None:
    assert Challenge.new(5).nonce != Challenge.new(5).nonce


def test_full_handshake_succeeds() -> None:
    challenge = Challenge.new(5)
    client_view = parse_challenge(strip(challenge.line()))
    hello = make_hello(TOKEN, client_view, "default", "laptop-41", HOSTS)

    gateway_view = parse_hello(strip(hello.line()))
    assert gateway_view == hello
    assert gateway_view.tunnel == "default"
    assert gateway_view.client == "laptop-41"
    assert gateway_view.hosts == HOSTS
    assert gateway_view.key == token_key(TOKEN)
    verify_hello(TOKEN, challenge, gateway_view)

    ready = ready_line(TOKEN, challenge, gateway_view)
    assert ready.startswith(VERSION + b" READY ")
    check_verdict(TOKEN, client_view, hello, strip(ready))


def test_handshake_without_hosts_round_trips() -> None:
    challenge, hello, auth = handshake(hosts=())
    assert b" hosts=- " in auth
    assert hello.hosts == ()
    verify_hello(TOKEN, challenge, hello)


def test_handshake_with_max_hosts_round_trips() -> None:
    hosts = tuple(f"h{i}.example.com" for i in range(MAX_HOSTS))
    challenge, hello, _ = handshake(hosts=hosts)
    assert hello.hosts == hosts
    verify_hello(TOKEN, challenge, hello)


def test_auth_line_is_readable_ascii() -> None:
    _, _, auth = handshake()
    text = auth.decode("ascii")
    assert text.startswith("REVGW/1 AUTH key=")
    assert "tunnel=default" in text
    assert "client=laptop-41" in text
    assert "hosts=app.example.com,*.dev.example.com" in text
    assert len(auth) <= MAX_LINE


def test_token_never_crosses_the_wire() -> None:
    challenge = Challenge.new(5)
    hello = make_hello(TOKEN, challenge, "default", "laptop-41", HOSTS)
    lines = [challenge.line(), hello.line(), ready_line(TOKEN, challenge, hello)]
    raw = TOKEN.encode()
    disguises = [
        raw,
        raw.hex().encode(),
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
        hashlib.sha256(raw).hexdigest().encode(),
    ]
    for line in lines:
        for disguise in disguises:
            assert disguise not in line, (disguise, line)


def test_ping_pong_and_start_lines() -> None:
    assert PING == b"PING\r\n"
    assert PONG == b"PONG\r\n"
    assert start_line("203.0.113.9") == b"START 203.0.113.9\r\n"


# --- the gateway checks the client ---------------------------------------------


def test_wrong_token_is_unknown() -> None:
    challenge, hello, _ = handshake(token=OTHER_TOKEN)
    with pytest.raises(AccessDenied, match="unknown token"):
        verify_hello(TOKEN, challenge, hello)


@pytest.mark.parametrize(
    "field, value",
    [
        ("tunnel", "other"),
        ("client", "someone-else"),
        ("hosts", "evil.example.com"),
        ("hosts", "-"),
        ("cnonce", "0" * 32),
    ],
)
def test_tampered_field_has_bad_signature(field: str, value: str) -> None:
    challenge, _, auth = handshake()
    words = strip(auth).decode().split(" ")
    words = [f"{field}={value}" if w.startswith(field + "=") else w for w in words]
    tampered = parse_hello(" ".join(words).encode())
    with pytest.raises(AccessDenied, match="bad token signature"):
        verify_hello(TOKEN, challenge, tampered)


def test_forged_mac_has_bad_signature() -> None:
    challenge, hello, _ = handshake()
    flipped = ("0" if hello.mac[0] != "0" else "1") + hello.mac[1:]
    forged = Hello(hello.key, hello.tunnel, hello.client, hello.hosts, hello.cnonce, flipped)
    with pytest.raises(AccessDenied, match="bad token signature"):
        verify_hello(TOKEN, challenge, forged)


def test_recorded_hello_cannot_be_replayed() -> None:
    challenge_a, hello, _ = handshake()
    verify_hello(TOKEN, challenge_a, hello)
    challenge_b = Challenge.new(5)
    with pytest.raises(AccessDenied, match="bad token signature"):
        verify_hello(TOKEN, challenge_b, hello)


# --- the client checks the gateway ---------------------------------------------


def test_ready_from_gateway_without_token_is_rejected() -> None:
    challenge, hello, _ = handshake()
    fake = ready_line(OTHER_TOKEN, challenge, hello)
    with pytest.raises(ProtocolError, match="could not prove"):
        check_verdict(TOKEN, challenge, hello, strip(fake))


def test_ready_for_another_connection_is_rejected() -> None:
    challenge, hello, _ = handshake()
    _, other_hello, _ = handshake()
    recorded = ready_line(TOKEN, challenge, other_hello)
    with pytest.raises(ProtocolError):
        check_verdict(TOKEN, challenge, hello, strip(recorded))


@pytest.mark.parametrize(
    "line",
    [
        b"REVGW/1 READY",
        b"REVGW/1 READY proof=",
        b"REVGW/1 READY proof=zz",
        b"REVGW/1 READY nonsense",
        b"REVGW/1 HELLO proof=00",
        b"HTTP/1.1 200 OK",
        b"",
    ],
)
def test_malformed_ready_is_protocol_error(line: bytes) -> None:
    challenge, hello, _ = handshake()
    with pytest.raises(ProtocolError):
        check_verdict(TOKEN, challenge, hello, line)


def test_denied_carries_reason_to_client() -> None:
    challenge, hello, _ = handshake()
    line = denied_line("host app.example.com is taken by another client")
    assert line == b"REVGW/1 DENIED host app.example.com is taken by another client\r\n"
    with pytest.raises(AccessDenied, match=r"host app\.example\.com is taken by another client"):
        check_verdict(TOKEN, challenge, hello, strip(line))


def test_denied_without_reason_still_denies() -> None:
    challenge, hello, _ = handshake()
    with pytest.raises(AccessDenied, match="denied"):
        check_verdict(TOKEN, challenge, hello, b"REVGW/1 DENIED")


def test_denied_reason_cannot_inject_lines() -> None:
    line = denied_line("bad\r\nREVGW/1 READY proof=00\nx\ry")
    assert line.endswith(b"\r\n")
    assert line.count(b"\r") == 1
    assert line.count(b"\n") == 1
    assert line.startswith(b"REVGW/1 DENIED bad")


def test_denied_reason_non_ascii_and_long_is_tamed() -> None:
    line = denied_line("héllo " + "x" * 500)
    line.decode("ascii")
    assert len(line) < 250
    challenge, hello, _ = handshake()
    with pytest.raises(AccessDenied, match=r"h\?llo xxx"):
        check_verdict(TOKEN, challenge, hello, strip(line))


# --- talking to the wrong port ----------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"HTTP/1.1 400 Bad Request", b"SSH-2.0-OpenSSH_9.6", b"", b"REVGW/1", b"\x16\x03\x01"],
)
def test_challenge_from_wrong_service_says_so(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a revgw gateway tunnel port"):
        parse_challenge(line)


@pytest.mark.parametrize(
    "line",
    [
        b"REVGW/1 CHALLENGE",
        b"REVGW/1 CHALLENGE heartbeat=5",
        b"REVGW/1 CHALLENGE nonce=abc heartbeat=5",  # too short
        b"REVGW/1 CHALLENGE nonce=" + b"G" * 32 + b" heartbeat=5",
        b"REVGW/1 CHALLENGE nonce=" + b"a" * 32,
        b"REVGW/1 CHALLENGE nonce=" + b"a" * 32 + b" heartbeat=soon",
        b"REVGW/1 CHALLENGE nonce=" + b"a" * 32 + b" heartbeat=0",
        b"REVGW/1 CHALLENGE nonce=" + b"a" * 32 + b" heartbeat=-1",
        b"REVGW/1 CHALLENGE nonce=" + b"a" * 32 + b" heartbeat=3601",
        b"REVGW/1 CHALLENGE nonce=" + b"a" * 32 + b" heartbeat=nan",
        b"REVGW/1 CHALLENGE nonce=" + b"a" * 32 + b" heartbeat=inf",
        b"REVGW/1 CHALLENGE nonce=" + b"a" * 32 + b" nonce=" + b"b" * 32 + b" heartbeat=5",
        b"REVGW/1 CHALLENGE nonce=" + b"a" * 32 + b"  heartbeat=5",
        b"REVGW/1 CHALLENGE nonce=" + b"a" * 32 + b" heartbeat=5 ",
        b"REVGW/1 READY nonce=" + b"a" * 32 + b" heartbeat=5",
        b"REVGW/1 CHALLENGE nonce=\xff" + b"a" * 32 + b" heartbeat=5",
        b"REVGW/2 CHALLENGE nonce=" + b"a" * 32 + b" heartbeat=5",
    ],
)
def test_malformed_challenge_is_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_challenge(line)


# --- malformed AUTH lines -----------------------------------------------------------


def good_fields() -> dict[str, str]:
    _, hello, _ = handshake()
    return {
        "key": hello.key,
        "tunnel": hello.tunnel,
        "client": hello.client,
        "hosts": ",".join(hello.hosts),
        "cnonce": hello.cnonce,
        "mac": hello.mac,
    }


def auth_line(fields: dict[str, str], extra: str = "") -> bytes:
    words = ["REVGW/1", "AUTH", *(f"{k}={v}" for k, v in fields.items())]
    return (" ".join(words) + extra).encode()


def test_good_fields_parse() -> None:
    parse_hello(auth_line(good_fields()))


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage",
        b"REVGW/1",
        b"REVGW/1 AUTH",
        b"REVGW/1 HELLO key=00",
        b"GET / HTTP/1.1",
        b"\xff\xfe REVGW/1 AUTH",
        b"REVGW/1 AUTH =x",
        b"REVGW/1 AUTH novalue",
    ],
)
def test_garbage_hello_is_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_hello(line)


@pytest.mark.parametrize("missing", ["key", "tunnel", "client", "hosts", "cnonce", "mac"])
def test_hello_missing_field_is_protocol_error(missing: str) -> None:
    fields = good_fields()
    del fields[missing]
    with pytest.raises(ProtocolError):
        parse_hello(auth_line(fields))


def test_hello_extra_field_is_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="exactly the fields"):
        parse_hello(auth_line(good_fields(), " admin=yes"))


@pytest.mark.parametrize("field", ["key", "tunnel", "client", "hosts", "cnonce", "mac"])
def test_hello_duplicate_field_is_protocol_error(field: str) -> None:
    fields = good_fields()
    with pytest.raises(ProtocolError, match="malformed field"):
        parse_hello(auth_line(fields, f" {field}={fields[field]}"))


def test_hello_with_double_space_is_protocol_error() -> None:
    line = auth_line(good_fields()).replace(b" tunnel=", b"  tunnel=")
    with pytest.raises(ProtocolError):
        parse_hello(line)


@pytest.mark.parametrize("field", ["key", "cnonce", "mac"])
@pytest.mark.parametrize("value", ["", "xyz", "ABCDEF0123456789ABCD", "0" * 8, "0" * 129, "0 1"])
def test_hello_non_hex_field_is_protocol_error(field: str, value: str) -> None:
    fields = good_fields()
    fields[field] = value
    with pytest.raises(ProtocolError):
        parse_hello(auth_line(fields))


@pytest.mark.parametrize(
    "tunnel",
    ["", "Default", "UPPER", "a" * 64, "-lead", ".lead", "sp ace", "ü", "a/b", "a,b"],
)
def test_hello_bad_tunnel_name_is_protocol_error(tunnel: str) -> None:
    fields = good_fields()
    fields["tunnel"] = tunnel
    with pytest.raises(ProtocolError):
        parse_hello(auth_line(fields))


@pytest.mark.parametrize("client", ["", "-lead", "a" * 65, "a/b", "a:b"])
def test_hello_bad_client_id_is_protocol_error(client: str) -> None:
    fields = good_fields()
    fields["client"] = client
    with pytest.raises(ProtocolError):
        parse_hello(auth_line(fields))


@pytest.mark.parametrize(
    "hosts",
    [
        "",
        ",",
        "a.example.com,",
        "App.Example.com",
        "-x.example.com",
        "x.example.com-",
        "a..b:80",
        "a_b.example.com",
        "x.*.example.com",
        ",".join(f"h{i}.example.com" for i in range(MAX_HOSTS + 1)),
    ],
)
def test_hello_bad_hosts_is_protocol_error(hosts: str) -> None:
    fields = good_fields()
    fields["hosts"] = hosts
    with pytest.raises(ProtocolError):
        parse_hello(auth_line(fields))


# --- check_identity -------------------------------------------------------------------


@pytest.mark.parametrize(
    "tunnel, client, hosts",
    [
        ("default", "laptop-41", ()),
        ("a", "A", ("x",)),
        ("a" * 63, "B" * 64, ("*.example.com", "example.com", "10.0.0.1")),
        ("t.1_x-y", "Client.Name_2-b", tuple(f"h{i}" for i in range(MAX_HOSTS))),
    ],
)
def test_check_identity_accepts(tunnel: str, client: str, hosts: tuple[str, ...]) -> None:
    check_identity(tunnel, client, hosts)


@pytest.mark.parametrize(
    "tunnel, client, hosts, blamed",
    [
        ("", "laptop", (), "tunnel"),
        ("Default", "laptop", (), "tunnel"),
        ("a" * 64, "laptop", (), "tunnel"),
        ("default", "", (), "client"),
        ("default", "a" * 65, (), "client"),
        ("default", "lap top", (), "client"),
        ("default", "laptop", ("Upper.example.com",), "host"),
        ("default", "laptop", ("",), "host"),
        ("default", "laptop", tuple(f"h{i}" for i in range(MAX_HOSTS + 1)), "hosts"),
    ],
)
def test_check_identity_rejects_naming_the_culprit(
    tunnel: str, client: str, hosts: tuple[str, ...], blamed: str
) -> None:
    with pytest.raises(ValueError, match=blamed):
        check_identity(tunnel, client, hosts)


# --- LineReader --------------------------------------------------------------------------


def read_all(reader: LineReader) -> list[bytes]:
    lines = []
    while (line := reader.next_line()) is not None:
        lines.append(line)
    return lines


def test_line_reader_whole() -> None:
    reader = LineReader()
    reader.feed(b"one\r\ntwo\r\n\r\nthree")
    assert read_all(reader) == [b"one", b"two", b""]
    assert reader.take_rest() == b"three"
    assert reader.take_rest() == b""


def test_line_reader_byte_by_byte() -> None:
    stream = b"REVGW/1 CHALLENGE nonce=" + b"a" * 32 + b" heartbeat=5\r\nPING\r\nPING\r\n"
    reader = LineReader()
    lines: list[bytes] = []
    for byte in stream:
        reader.feed(bytes([byte]))
        lines += read_all(reader)
    assert lines == stream.split(b"\r\n")[:-1]
    assert reader.take_rest() == b""


def test_line_reader_bare_lf_and_cr_are_not_line_ends() -> None:
    reader = LineReader()
    reader.feed(b"a\nb\rc\r\n")
    assert read_all(reader) == [b"a\nb\rc"]


def test_line_reader_hands_over_caller_bytes_after_start() -> None:
    reader = LineReader()
    request = b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n"
    reader.feed(b"PING\r\nSTART 203.0.113.9\r\n" + request)
    assert reader.next_line() == b"PING"
    assert reader.next_line() == b"START 203.0.113.9"
    assert reader.take_rest() == request


def test_line_reader_take_rest_keeps_binary_garbage() -> None:
    reader = LineReader()
    reader.feed(b"START x\r\n\x00\xff\r")
    assert reader.next_line() == b"START x"
    assert reader.take_rest() == b"\x00\xff\r"


def test_line_reader_rejects_endless_line() -> None:
    reader = LineReader(limit=16)
    reader.feed(b"x" * 17)
    with pytest.raises(ProtocolError, match="longer than 16"):
        reader.next_line()


def test_line_reader_rejects_endless_line_dribbled() -> None:
    reader = LineReader(limit=16)
    with pytest.raises(ProtocolError):
        for _ in range(100):
            reader.feed(b"x")
            reader.next_line()


def test_line_reader_rejects_too_long_line_even_with_crlf() -> None:
    reader = LineReader(limit=16)
    reader.feed(b"x" * 17 + b"\r\n")
    with pytest.raises(ProtocolError):
        reader.next_line()


def test_line_reader_rejects_default_limit() -> None:
    reader = LineReader()
    reader.feed(b"x" * (MAX_LINE + 1) + b"\r\n")
    with pytest.raises(ProtocolError):
        reader.next_line()


def test_line_reader_accepts_exactly_limit() -> None:
    reader = LineReader(limit=16)
    reader.feed(b"x" * 16 + b"\r\nnext")
    assert reader.next_line() == b"x" * 16
    assert reader.take_rest() == b"next"


def test_line_reader_accepts_exactly_default_limit() -> None:
    reader = LineReader()
    reader.feed(b"x" * MAX_LINE + b"\r\n")
    assert reader.next_line() == b"x" * MAX_LINE


def test_line_reader_accepts_exactly_limit_with_lf_late() -> None:
    """A line of exactly ``limit`` bytes whose LF arrives in a later read."""
    reader = LineReader(limit=16)
    reader.feed(b"x" * 16)
    assert reader.next_line() is None
    reader.feed(b"\r")
    assert reader.next_line() is None
    reader.feed(b"\n")
    assert reader.next_line() == b"x" * 16


def test_line_reader_accepts_exactly_limit_byte_by_byte() -> None:
    reader = LineReader(limit=16)
    lines: list[bytes] = []
    for byte in b"x" * 16 + b"\r\n":
        reader.feed(bytes([byte]))
        lines += read_all(reader)
    assert lines == [b"x" * 16]


# --- properties -------------------------------------------------------------------------

_FIELD_WORDS = st.sampled_from(
    [
        "REVGW/1",
        "AUTH",
        "CHALLENGE",
        "READY",
        "DENIED",
        "key=",
        "tunnel=",
        "client=",
        "hosts=",
        "cnonce=",
        "mac=",
        "nonce=",
        "heartbeat=",
        "proof=",
        "=",
        "-",
        ",",
        " ",
        "0" * 16,
        "a" * 32,
        "default",
        "5",
        "1e3",
        "nan",
        "*.x",
    ]
)
protocolish = st.lists(_FIELD_WORDS | st.text(max_size=4), max_size=20).map(
    lambda words: "".join(words).encode()
)
any_line = st.binary(max_size=300) | protocolish


@PROPERTY
@given(any_line)
def test_parse_hello_only_raises_protocol_error(line: bytes) -> None:
    try:
        hello = parse_hello(line)
    except ProtocolError:
        return
    assert parse_hello(strip(hello.line())) == hello


@PROPERTY
@given(any_line)
def test_parse_challenge_only_raises_protocol_error(line: bytes) -> None:
    try:
        challenge = parse_challenge(line)
    except ProtocolError:
        return
    assert 0 < challenge.heartbeat <= 3600


@PROPERTY
@given(any_line)
def test_check_verdict_only_raises_protocol_errors(line: bytes) -> None:
    challenge, hello, _ = handshake()
    with pytest.raises((ProtocolError, AccessDenied)):
        check_verdict(TOKEN, challenge, hello, line)


@PROPERTY
@given(any_line)
def test_verify_hello_on_any_parsed_line_only_denies(line: bytes) -> None:
    try:
        hello = parse_hello(line)
    except ProtocolError:
        return
    with pytest.raises(AccessDenied):
        verify_hello(TOKEN, Challenge.new(5), hello)


@PROPERTY
@given(st.lists(st.binary(max_size=40) | st.just(b"\r\n") | st.just(b"\r"), max_size=30))
def test_line_reader_yields_lines_or_protocol_error(chunks: list[bytes]) -> None:
    limit = 32
    reader = LineReader(limit=limit)
    lines: list[bytes] = []
    try:
        for chunk in chunks:
            reader.feed(chunk)
            lines += read_all(reader)
    except ProtocolError:
        return
    stream = b"".join(chunks)
    # Every line came out in order, short enough, and the rest is what followed.
    assert b"".join(line + b"\r\n" for line in lines) + reader.take_rest() == stream
    assert all(len(line) <= limit and b"\r\n" not in line for line in lines)


@PROPERTY
@given(
    lines=st.lists(st.binary(max_size=31).filter(lambda b: b"\r" not in b), max_size=8),
    rest=st.binary(max_size=20).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r")),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_line_reader_reads_short_lines_however_split(
    lines: list[bytes], rest: bytes, cuts: list[int]
) -> None:
    stream = b"".join(line + b"\r\n" for line in lines) + rest
    reader = LineReader(limit=32)
    got: list[bytes] = []
    for piece in split_at(stream, cuts):
        reader.feed(piece)
        got += read_all(reader)
    assert got == lines
    assert reader.take_rest() == rest


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points)]


name = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
client_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
host = st.from_regex(r"(\*\.)?[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True)


@PROPERTY
@given(
    token=st.text(min_size=1, max_size=40),
    tunnel=name,
    client=client_id,
    hosts=st.lists(host, max_size=MAX_HOSTS).map(tuple),
    heartbeat=st.floats(min_value=0.01, max_value=3600),
)
def test_any_valid_identity_handshakes(
    token: str, tunnel: str, client: str, hosts: tuple[str, ...], heartbeat: float
) -> None:
    challenge = Challenge.new(heartbeat)
    seen = parse_challenge(strip(challenge.line()))
    assert seen == challenge
    hello = make_hello(token, seen, tunnel, client, hosts)
    parsed = parse_hello(strip(hello.line()))
    assert parsed == hello
    verify_hello(token, challenge, parsed)
    check_verdict(token, seen, hello, strip(ready_line(token, challenge, parsed)))
