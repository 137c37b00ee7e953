"""Issue 5, item 4: who may reach a tunnel, declared by its client, enforced by the gateway.

``revgw client --basic-auth USER:PASS --allow-cidr CIDR`` declares the rules
at handshake (credentials only as salted hashes); the gateway answers 401 or
403 itself, before pairing, so a refused caller never reaches the client or
the private server. A tokens file's rules win over what clients declare.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from conftest import TOKEN, ClientFactory, GatewayFactory
from helpers import Response, get
from revgw import AccessDenied, Client, ConfigError, ProtocolError
from revgw import _handshake as hs
from revgw._settings import ClientSettings
from revgw._tokens import Access, access_from_hello, declared_fields, hash_credential

ALPHA = "alpha-token-0123456789abcdef"


def basic(credential: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credential.encode()).decode()}


class RecordingServer:
    """A private server that notes every request head it is sent and answers ``private``."""

    def __init__(self) -> None:
        self.address = ""
        self.heads: list[bytes] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.heads.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nprivate")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def recording_server() -> AsyncIterator[RecordingServer]:
    recorder = RecordingServer()
    listener = await asyncio.start_server(recorder._handle, "127.0.0.1", 0)
    recorder.address = f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    try:
        yield recorder
    finally:
        listener.close()


# --- sans-IO: the rules ---------------------------------------------------------------------------


def test_credentials_cross_the_wire_only_as_salted_hashes() -> None:
    hashes, cidrs = declared_fields("alpha", ("alice:s3cret",), ("10.1.2.3/8",))
    assert cidrs == ("10.0.0.0/8",)
    (stored,) = hashes
    assert "s3cret" not in stored and "alice" not in stored
    assert stored.startswith("pbkdf2-sha256$10000$")
    # the same rules give the same hash on every client of a tunnel, another per tunnel
    assert hash_credential("alpha", "alice:s3cret") == stored
    assert hash_credential("beta", "alice:s3cret") != stored


def test_access_checks_basic_credentials() -> None:
    access = Access((hash_credential("t", "alice:s3cret"), hash_credential("t", "bob:pw")))
    assert access.authorized(basic("alice:s3cret")["Authorization"].encode())
    assert access.authorized(b"basic " + base64.b64encode(b"bob:pw"))  # scheme is case-blind
    assert not access.authorized(None)
    assert not access.authorized(basic("alice:wrong")["Authorization"].encode())
    assert not access.authorized(b"Basic !!!not-base64")
    assert not access.authorized(b"Bearer abc")
    assert Access().authorized(None)


def test_access_checks_the_caller_address() -> None:
    access = access_from_hello((), ("10.0.0.0/8", "2001:db8::/32"))
    assert access.address_allowed("10.9.8.7")
    assert access.address_allowed("::ffff:10.9.8.7")  # IPv4-mapped, as a dual-stack socket reports
    assert access.address_allowed("2001:db8::1")
    assert not access.address_allowed("127.0.0.1")
    assert not access.address_allowed("unknown")
    assert Access().address_allowed("127.0.0.1")


def test_access_rules_in_the_auth_line_are_signed_and_optional() -> None:
    challenge = hs.Challenge.new(5)
    hashes, cidrs = declared_fields("t", ("alice:pw",), ("127.0.0.0/8",))
    hello = hs.make_hello(TOKEN, challenge, "t", "c1", (), basic=hashes, cidrs=cidrs)
    line = hello.line()
    assert b" basic=pbkdf2-sha256$" in line and b" cidr=127.0.0.0/8 " in line
    parsed = hs.parse_hello(line[:-2])
    assert (parsed.basic, parsed.cidrs) == (hashes, cidrs)
    hs.verify_hello(TOKEN, challenge, parsed)
    # dropping the rules on the way (a meddler opening the tunnel up) breaks the MAC
    stripped = line.replace(b" cidr=127.0.0.0/8", b"")
    with pytest.raises(AccessDenied, match="bad token signature"):
        hs.verify_hello(TOKEN, challenge, hs.parse_hello(stripped[:-2]))
    # an older client's line, without them, is still valid
    old = hs.make_hello(TOKEN, challenge, "t", "c1", ())
    assert b"basic=" not in old.line() and b"cidr=" not in old.line()
    hs.verify_hello(TOKEN, challenge, hs.parse_hello(old.line()[:-2]))


@pytest.mark.parametrize(
    "field", [b"basic=plain:password", b"cidr=10.0.0.0", b"cidr=" + b",".join([b"1.2.3.4/32"] * 17)]
)
def test_malformed_access_fields_are_protocol_errors(field: bytes) -> None:
    hello = hs.make_hello(TOKEN, hs.Challenge.new(5), "t", "c1", ())
    line = hello.line()[:-2].replace(b" cnonce=", b" " + field + b" cnonce=")
    with pytest.raises(ProtocolError, match="malformed"):
        hs.parse_hello(line)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"basic_auth": ("alice",)}, "--basic-auth: basic auth must be USER:PASS"),
        ({"basic_auth": (":pw",)}, "--basic-auth: basic auth must be USER:PASS"),
        ({"allow_cidr": ("10.0.0.0/33",)}, r"--allow-cidr: '10\.0\.0\.0/33' is not a network"),
    ],
)
def test_bad_access_settings_are_config_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClientSettings(token=TOKEN, **overrides)  # type: ignore[arg-type]


# --- enforced by a real gateway -------------------------------------------------------------------


async def test_basic_auth_answers_401_without_reaching_the_client(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with (
        recording_server() as private,
        make_gateway() as gw,
        make_client(gw, target=private.address, basic_auth=("alice:s3cret",)),
    ):
        missing = await get(gw.address)
        wrong = await get(gw.address, headers=basic("alice:nope"))
        assert private.heads == []  # refused callers never got through
        right = await get(gw.address, headers=basic("alice:s3cret"))
    for response in (missing, wrong):
        assert response.status == 401, response
        assert response.header("x-revgw-error") == "unauthorized"
        assert "tunnel 'default' needs a user name and password" in response.text
    assert (right.status, right.body) == (200, b"private")
    # the Authorization header is passed on: the private server may use it too
    assert len(private.heads) == 1 and b"\r\nAuthorization: Basic " in private.heads[0]


async def test_401_carries_www_authenticate(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with make_gateway() as gw, make_client(gw, basic_auth=("alice:s3cret",)):
        response = await get(gw.address)
    assert response.status == 401
    assert (
        response.header("www-authenticate") == 'Basic realm="revgw tunnel default", charset="UTF-8"'
    )


async def test_a_caller_outside_the_allowed_networks_gets_403(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with (
        recording_server() as private,
        make_gateway() as gw,
        make_client(gw, target=private.address, allow_cidr=("10.0.0.0/8",)),
    ):
        refused = await get(gw.address, headers=basic("alice:s3cret"))
    assert refused.status == 403
    assert refused.header("x-revgw-error") == "forbidden"
    assert "does not accept callers from 127.0.0.1" in refused.text
    assert private.heads == []


async def test_a_caller_inside_the_allowed_networks_with_credentials_gets_through(
    make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    async with (
        recording_server() as private,
        make_gateway() as gw,
        make_client(
            gw,
            target=private.address,
            allow_cidr=("192.0.2.0/24", "127.0.0.0/8"),
            basic_auth=("alice:s3cret", "bob:pw"),
        ),
    ):
        response = await get(gw.address, headers=basic("bob:pw"))
        no_password = await get(gw.address)
    assert (response.status, response.body) == (200, b"private")
    assert no_password.status == 401


async def test_a_second_client_with_other_rules_is_denied_and_same_rules_join(
    make_gateway: GatewayFactory,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first client's rules hold while the tunnel is online: nobody can open it up."""
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway() as gw, make_client(gw, basic_auth=("alice:s3cret",)):
        with (
            anyio.fail_after(5),
            pytest.raises(AccessDenied, match="tunnel 'default' is online with other access rules"),
        ):
            async with Client(gateway=gw.tunnel_address, target="127.0.0.1:1", token=TOKEN):
                await anyio.sleep_forever()
        async with make_client(gw, basic_auth=("alice:s3cret",), client_id="second"):
            assert set(gw.registry.tunnels["default"].clients) >= {"second"}
        response = await get(gw.address)
    assert response.status == 401  # still protected


async def test_the_tokens_file_rules_win_over_the_clients(
    make_gateway: GatewayFactory, make_client: ClientFactory, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        f'[tenant.alpha]\ntoken = "{ALPHA}"\ntunnels = ["alpha"]\nhosts = ["a.example.com"]\n'
        'basic_auth = ["carol:from-file"]\n'
    )
    async with (
        recording_server() as private,
        make_gateway(token=None, tokens=str(path)) as gw,
        make_client(
            gw,
            target=private.address,
            token=ALPHA,
            tunnel="alpha",
            host=("a.example.com",),
            basic_auth=("alice:s3cret",),
        ),
    ):
        client_rule = await get(gw.address, host="a.example.com", headers=basic("alice:s3cret"))
        file_rule: Response = await get(
            gw.address, host="a.example.com", headers=basic("carol:from-file")
        )
    assert client_rule.status == 401
    assert (file_rule.status, file_rule.body) == (200, b"private")
