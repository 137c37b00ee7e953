"""Issue 5, item 2: scoped tokens (``--tokens FILE``) and their reload on SIGHUP.

One leaked token exposes one tenant: a token registers only the tunnels and
Host names its tenant is granted, and is denied with the reason otherwise.
Reloading the file changes what new handshakes may do and leaves live
connections serving.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import GatewayFactory
from helpers import Connection, read_line, split
from revgw import AccessDenied, Client, ConfigError, Gateway, GatewaySettings
from revgw import _handshake as hs
from revgw._errors import NoTunnel
from revgw._pool import Registry
from revgw._tokens import Tenant, host_granted, load_tokens, parse_tokens
from revgw_examples.server import Server
from test_cli import clean_env, revgw

ALPHA = "alpha-token-0123456789abcdef"
BETA = "beta-token-0123456789abcdef"

TOKENS = f"""
[tenant.alpha]
token = "{ALPHA}"
tunnels = ["alpha"]
hosts = ["a.example.com", "*.a.example.com"]

[tenant.beta]
token = "{BETA}"
tunnels = ["beta"]
hosts = ["b.example.com"]
"""


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS)
    return path


# --- sans-IO: the file and the grants ---------------------------------------------------


def test_a_tokens_file_maps_each_key_to_its_tenant() -> None:
    tokens = parse_tokens(TOKENS, "tokens.toml")
    alpha = tokens.find(hs.token_key(ALPHA))
    assert alpha is not None and alpha.name == "alpha"
    assert alpha.tunnels == ("alpha",)
    assert tokens.find(hs.token_key("not-a-token")) is None
    assert len(tokens) == 2


@pytest.mark.parametrize(
    ("host", "granted"),
    [
        ("a.example.com", True),
        ("x.a.example.com", True),
        ("y.x.a.example.com", True),
        ("*.a.example.com", True),  # the wildcard itself, when granted
        ("*.x.a.example.com", True),  # a narrower wildcard
        ("example.com", False),
        ("b.example.com", False),
        ("xa.example.com", False),
        ("*.example.com", False),  # wider than granted
        ("a.example.com.evil.net", False),
    ],
)
def test_host_grants_match_exactly_or_under_a_wildcard(host: str, granted: bool) -> None:
    assert host_granted(host, ("a.example.com", "*.a.example.com")) is granted


def test_a_wildcard_does_not_grant_its_own_apex() -> None:
    assert not host_granted("a.example.com", ("*.a.example.com",))


def test_tenant_check_names_the_tenant_and_what_it_lacks() -> None:
    tenant = Tenant("alpha", ALPHA, ("alpha",), ("a.example.com",))
    tenant.check("alpha", ("a.example.com",))
    with pytest.raises(AccessDenied, match="token for tenant 'alpha' does not grant tunnel 'beta'"):
        tenant.check("beta", ())
    with pytest.raises(AccessDenied, match=r"does not grant host 'b\.example\.com'"):
        tenant.check("alpha", ("b.example.com",))
    Tenant("default", ALPHA).check("anything", ("any.host",))  # --token: unlimited


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tenant.a\n", r"t\.toml: not valid TOML"),
        ("x = 1\n", r"t\.toml: unknown key 'x'"),
        ("", r"t\.toml: no \[tenant\.NAME\] table"),
        ('[tenant.a]\ntoken = "short"\ntunnels = []\n', r"t\.toml: tenant\.a\.token: must be"),
        (f'[tenant.a]\ntoken = "{ALPHA}"\n', r"tenant\.a\.tunnels: missing"),
        (f'[tenant.a]\ntoken = "{ALPHA}"\ntunnels = "a"\n', r"tenant\.a\.tunnels: must be a list"),
        (f'[tenant.a]\ntoken = "{ALPHA}"\ntunnels = ["A B"]\n', r"tenant\.a\.tunnels: tunnel name"),
        (
            f'[tenant.a]\ntoken = "{ALPHA}"\ntunnels = []\nhosts = ["a.*.com"]\n',
            r"tenant\.a\.hosts: host 'a\.\*\.com'",
        ),
        (
            f'[tenant.a]\ntoken = "{ALPHA}"\ntunnels = []\ncolour = 1\n',
            r"tenant\.a\.colour: unknown",
        ),
        (
            f'[tenant.a]\ntoken = "{ALPHA}"\ntunnels = []\nallow_cidr = ["10.0.0.0/99"]\n',
            r"tenant\.a\.allow_cidr: '10\.0\.0\.0/99' is not a network",
        ),
        (
            f'[tenant.a]\ntoken = "{ALPHA}"\ntunnels = []\nbasic_auth = ["nopassword"]\n',
            r"tenant\.a\.basic_auth: basic auth must be USER:PASS",
        ),
        (
            f'[tenant.a]\ntoken = "{ALPHA}"\ntunnels = []\n[tenant.b]\ntoken = "{ALPHA}"\n'
            "tunnels = []\n",
            r"tenant\.b\.token is the same as tenant\.a's",
        ),
    ],
)
def test_a_bad_tokens_file_names_the_file_and_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_tokens(text, "t.toml")


def test_a_missing_tokens_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read the tokens file"):
        load_tokens(str(tmp_path / "missing.toml"))


def test_token_and_tokens_together_are_refused(tokens_file: Path) -> None:
    with pytest.raises(ConfigError, match="--token and --tokens exclude each other"):
        GatewaySettings(token="x" * 20, tokens=str(tokens_file))


def test_a_gateway_with_a_tokens_file_has_no_single_token(tokens_file: Path) -> None:
    gateway = Gateway(tokens=str(tokens_file), token=None)
    assert gateway.token is None
    assert len(gateway.tokens) == 2


# --- handshakes against a real gateway ------------------------------------------------------


async def handshake(
    gw: Gateway | str, token: str, tunnel: str, hosts: tuple[str, ...] = ()
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One raw tunnel connection; AccessDenied (with the gateway's reason) if refused."""
    address = gw if isinstance(gw, str) else gw.tunnel_address
    reader, writer = await asyncio.open_connection(*split(address))
    try:
        with anyio.fail_after(5):
            challenge = hs.parse_challenge(await read_line(reader))
            hello = hs.make_hello(token, challenge, tunnel, "fake-client", hosts)
            writer.write(hello.line())
            hs.check_verdict(token, challenge, hello, await read_line(reader))
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Act as the client and its private server for one request: answer ``tenant-ok``."""
    with anyio.fail_after(5):
        while (line := await read_line(reader)) == b"PING":
            writer.write(hs.PONG)
        assert line.startswith(b"START ")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntenant-ok")
        await writer.drain()
        writer.close()


async def test_a_token_serves_its_own_tunnel_and_hosts(
    make_gateway: GatewayFactory, tokens_file: Path
) -> None:
    async with make_gateway(token=None, tokens=str(tokens_file), default_tunnel="") as gw:
        reader, writer = await handshake(gw, ALPHA, "alpha", ("a.example.com", "*.a.example.com"))
        serving = asyncio.create_task(serve_one(reader, writer))
        conn = await Connection.open(gw.address)
        try:
            response = await conn.request(host="shop.a.example.com")  # via the wildcard
        finally:
            await conn.close()
        await serving
        assert (response.status, response.body) == (200, b"tenant-ok")


@pytest.mark.parametrize(
    ("tunnel", "hosts", "reason"),
    [
        ("beta", (), "token for tenant 'alpha' does not grant tunnel 'beta'"),
        (
            "alpha",
            ("b.example.com",),
            "token for tenant 'alpha' does not grant host 'b.example.com'",
        ),
        ("alpha", ("*.example.com",), "does not grant host '\\*.example.com'"),
        ("alpha", ("example.com",), "does not grant host 'example.com'"),
    ],
)
async def test_a_leaked_token_cannot_take_another_tenants_tunnel_or_hosts(
    make_gateway: GatewayFactory,
    tokens_file: Path,
    caplog: pytest.LogCaptureFixture,
    tunnel: str,
    hosts: tuple[str, ...],
    reason: str,
) -> None:
    """Alpha's token is denied beta's tunnel and hosts outside alpha's grants, with the reason."""
    caplog.set_level(logging.INFO, logger="revgw")
    async with make_gateway(token=None, tokens=str(tokens_file)) as gw:
        with pytest.raises(AccessDenied, match=reason):
            await handshake(gw, ALPHA, tunnel, hosts)
        assert all(not t.live for t in gw.registry.tunnels.values())
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "revgw.gateway" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1
    assert "denied" in warnings[0]


async def test_the_library_client_stops_with_the_reason(
    make_gateway: GatewayFactory, tokens_file: Path, server: Server
) -> None:
    async with make_gateway(token=None, tokens=str(tokens_file)) as gw:
        with (
            anyio.fail_after(5),
            pytest.raises(AccessDenied, match="tenant 'alpha' does not grant tunnel 'beta'"),
        ):
            async with Client(
                gateway=gw.tunnel_address, target=server.address, token=ALPHA, tunnel="beta"
            ):
                await anyio.sleep_forever()


async def test_an_unknown_token_is_denied(make_gateway: GatewayFactory, tokens_file: Path) -> None:
    async with make_gateway(token=None, tokens=str(tokens_file)) as gw:
        with pytest.raises(AccessDenied, match="unknown token"):
            await handshake(gw, "some-other-token-0123456789", "alpha")


# --- reload ------------------------------------------------------------------------------------


async def test_reload_denies_a_revoked_tenants_new_handshakes_and_keeps_its_live_ones(
    make_gateway: GatewayFactory, tokens_file: Path
) -> None:
    async with make_gateway(token=None, tokens=str(tokens_file), default_tunnel="") as gw:
        live = await handshake(gw, ALPHA, "alpha", ("a.example.com",))
        # beta loses its tenant; alpha is narrowed to another host
        rewrite(
            tokens_file,
            f'[tenant.alpha]\ntoken = "{ALPHA}"\ntunnels = ["alpha"]\n'
            'hosts = ["new.example.com"]\n',
        )
        assert gw.reload_tokens() == "1 tenant(s), removed beta"
        with pytest.raises(AccessDenied, match="unknown token"):
            await handshake(gw, BETA, "beta")
        with pytest.raises(AccessDenied, match=r"does not grant host 'a\.example\.com'"):
            await handshake(gw, ALPHA, "alpha", ("a.example.com",))
        # the connection made under the old grants still serves
        serving = asyncio.create_task(serve_one(*live))
        conn = await Connection.open(gw.address)
        try:
            response = await conn.request(host="a.example.com")
        finally:
            await conn.close()
        await serving
        assert (response.status, response.body) == (200, b"tenant-ok")


async def test_a_bad_file_on_reload_keeps_the_tokens_in_use(
    make_gateway: GatewayFactory, tokens_file: Path
) -> None:
    async with make_gateway(token=None, tokens=str(tokens_file)) as gw:
        rewrite(tokens_file, "[tenant.alpha\n")
        with pytest.raises(ConfigError, match=r"tokens\.toml: not valid TOML"):
            gw.reload_tokens()
        _, writer = await handshake(gw, BETA, "beta")  # the old grants still hold
        writer.close()


async def test_reload_without_a_tokens_file_is_a_config_error(
    make_gateway: GatewayFactory,
) -> None:
    async with make_gateway() as gw:
        with pytest.raises(ConfigError, match="no --tokens file"):
            gw.reload_tokens()


# --- the command line ----------------------------------------------------------------------------


async def test_cli_bad_tokens_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "tokens.toml"
    bad.write_text('[tenant.a]\ntoken = "short"\ntunnels = []\n')
    async with revgw("gateway", "--listen", "127.0.0.1:0", "--tokens", str(bad)) as proc:
        code = await proc.finish()
    assert code == 2
    assert proc.err == [
        f"revgw gateway: error: {bad}: tenant.a.token: must be a string of at least 16 characters"
    ]


async def test_cli_sighup_reloads_the_tokens_file(tokens_file: Path) -> None:
    """No token is printed; SIGHUP logs one line and new handshakes see the new file."""
    args = ["--listen", "127.0.0.1:0", "--tunnel-listen", "127.0.0.1:0"]
    async with revgw("gateway", *args, "--tokens", str(tokens_file), env=clean_env()) as proc:
        tunnel_port = (await proc.line(r"tunnel clients on 127\.0\.0\.1:(\d+)"))[1]
        await proc.line(r"scoped tokens: 2 tenant\(s\) from .*; SIGHUP reloads it")
        gw = f"127.0.0.1:{tunnel_port}"
        _, writer = await handshake(gw, BETA, "beta")
        writer.close()
        rewrite(tokens_file, "[tenant.alpha\n")
        proc.process.send_signal(signal.SIGHUP)
        await proc.line(r"warning: SIGHUP: kept the tokens in use: .*not valid TOML")
        rewrite(tokens_file, TOKENS.split("[tenant.beta]", maxsplit=1)[0])
        proc.process.send_signal(signal.SIGHUP)
        await proc.line(r"SIGHUP: reloaded .*tokens\.toml: 1 tenant\(s\), removed beta$")
        with pytest.raises(AccessDenied, match="unknown token"):
            await handshake(gw, BETA, "beta")
        assert proc.process.returncode is None
    assert not any("--token" in line for line in proc.out)


def test_routing_prefers_the_exact_host_then_the_most_specific_wildcard() -> None:
    registry: Registry[Any] = Registry("", max_warm=0)
    registry.claim("wide", ("*.example.com",))
    registry.claim("narrow", ("*.a.example.com",))
    registry.claim("exact", ("x.a.example.com",))
    assert registry.route("x.a.example.com").name == "exact"
    assert registry.route("y.a.example.com").name == "narrow"
    assert registry.route("deep.y.a.example.com").name == "narrow"
    assert registry.route("a.example.com").name == "wide"
    with pytest.raises(NoTunnel):
        registry.route("example.com")
