"""TLS on the tunnel port and the public port, and the client's three ways to trust a gateway.

Certificates are made at test time: one CA, two server certificates for
127.0.0.1/localhost signed by it (``other`` stands for a replaced or forged
certificate), and a stranger CA nobody trusts.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from conftest import TOKEN, ClientFactory, GatewayFactory
from helpers import Connection, get
from revgw import Client, ConfigError, Gateway
from revgw._cli import main
from revgw._settings import ClientSettings, GatewaySettings
from revgw._tls import UntrustedGateway, file_fingerprint
from revgw_examples.server import Server

# --- certificates ---------------------------------------------------------------------------


@dataclass
class Pair:
    cert: str
    key: str

    @property
    def fingerprint(self) -> str:
        return file_fingerprint(self.cert)


@dataclass
class Certs:
    ca: str
    server: Pair
    other: Pair  # same CA and names, another key: a replaced certificate
    stranger: Pair  # signed by a CA nobody here trusts


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _make_ca(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, directory: Path, name: str
) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pair = Pair(str(directory / f"{name}.pem"), str(directory / f"{name}.key"))
    Path(pair.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, Path(pair.key))
    return pair


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("tls")
    ca, ca_key = _make_ca("revgw test CA")
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    stranger_ca, stranger_key = _make_ca("stranger CA")
    return Certs(
        ca=str(directory / "ca.pem"),
        server=_make_server(ca, ca_key, directory, "server"),
        other=_make_server(ca, ca_key, directory, "other"),
        stranger=_make_server(stranger_ca, stranger_key, directory, "stranger"),
    )


# --- helpers --------------------------------------------------------------------------------


class LogWatch(logging.Handler):
    """Wakes a waiter when a log line containing some words arrives: no polling."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name} {record.getMessage()}")
        self._changed.set()

    def matching(self, *words: str) -> list[str]:
        return [line for line in self.lines if all(w in line for w in words)]

    async def wait_for(self, *words: str, timeout: float = 5) -> str:
        with anyio.fail_after(timeout):
            while not (found := self.matching(*words)):
                self._changed.clear()
                await self._changed.wait()
        return found[0]


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    root = logging.getLogger("revgw")
    old_level = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    yield watch
    root.removeHandler(watch)
    root.setLevel(old_level)


def tls_gateway(
    make_gateway: GatewayFactory, pair: Pair, **overrides: object
) -> AbstractAsyncContextManager[Gateway]:
    return make_gateway(tls_cert=pair.cert, tls_key=pair.key, **overrides)


async def https_get(address: str, ca: str, target: str = "/ping") -> tuple[int, bytes]:
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=ca)
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=context, server_hostname="localhost"
    )
    connection = Connection(reader, writer)
    try:
        with anyio.fail_after(5):
            response = await connection.request("GET", target)
        return response.status, response.body
    finally:
        await connection.close()


async def refused(client: Client, timeout: float = 5) -> UntrustedGateway:
    """Run ``client`` until it stops by itself; the error it stopped with."""
    with anyio.fail_after(timeout), pytest.raises(UntrustedGateway) as caught:
        await client.run()
    return caught.value


# --- the tunnel port over TLS ---------------------------------------------------------------


async def test_pong_through_a_tls_tunnel_verified_with_ca(
    certs: Certs, make_gateway: GatewayFactory, make_client: ClientFactory, logs: LogWatch
) -> None:
    async with (
        tls_gateway(make_gateway, certs.server) as gw,
        make_client(gw, ca=certs.ca) as client,
    ):
        assert client.settings.tls  # --ca implies --tls
        response = await get(gw.address, "/ping")
        assert (response.status, response.body) == (200, b"pong")
    assert logs.matching("tunnel certificate", certs.server.fingerprint)


async def test_big_body_keep_alive_and_websocket_through_a_tls_tunnel(
    certs: Certs, make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """The data path over TLS transports: 1 MiB each way, a reused connection, an upgrade."""

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    body = os.urandom(1 << 20)
    async with (
        tls_gateway(make_gateway, certs.server) as gw,
        make_client(gw, ca=certs.ca),
    ):
        connection = await Connection.open(gw.address)
        try:
            with anyio.fail_after(10):
                echoed = await connection.request("POST", "/echo", body=body)
                assert (echoed.status, echoed.body == body) == (200, True)
                big = await connection.request("GET", f"/bytes/{1 << 20}")
                assert (big.status, len(big.body)) == (200, 1 << 20)
                again = await connection.request("GET", "/ping")
                assert (again.status, again.body) == (200, b"pong")
        finally:
            await connection.close()

    async with (
        tls_gateway(make_gateway, certs.server) as gw,
        serve(echo, "127.0.0.1", 0) as ws_server,
    ):
        port = ws_server.sockets[0].getsockname()[1]
        async with Client(
            gateway=gw.tunnel_address, target=f"127.0.0.1:{port}", token=TOKEN, pool=1,
            ca=certs.ca,
        ) as ws_client:  # fmt: skip
            with anyio.fail_after(10):
                await ws_client.wait_ready()
                async with connect(f"ws://{gw.address}/chat") as ws:
                    for size in (5, 200_000):
                        message = os.urandom(size)
                        await ws.send(message)
                        assert await ws.recv() == message


async def test_right_fingerprint_connects_without_a_ca(
    certs: Certs, make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    digest = certs.stranger.fingerprint.removeprefix("sha256:").upper()
    pin = "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))  # openssl's form
    async with (
        tls_gateway(make_gateway, certs.stranger) as gw,  # a CA nobody trusts: the pin is enough
        make_client(gw, fingerprint=pin) as client,
    ):
        assert client.settings.fingerprint == certs.stranger.fingerprint
        assert (await get(gw.address, "/ping")).body == b"pong"


async def test_wrong_fingerprint_refuses_and_stops_the_client(
    certs: Certs, make_gateway: GatewayFactory, server: Server, logs: LogWatch
) -> None:
    async with tls_gateway(make_gateway, certs.other) as gw:
        client = Client(
            gateway=gw.tunnel_address,
            target=server.address,
            token=TOKEN,
            pool=2,
            fingerprint=certs.server.fingerprint,
        )
        error = await refused(client)
    message = str(error)
    assert certs.other.fingerprint in message
    assert f"pinned --fingerprint {certs.server.fingerprint}" in message
    assert not logs.matching("AUTH")  # the gateway never saw a handshake
    assert not logs.matching("retrying in")


async def test_trust_on_first_use_records_then_accepts_then_refuses_a_change(
    certs: Certs, make_gateway: GatewayFactory, server: Server, tmp_path: Path, logs: LogWatch
) -> None:
    known = tmp_path / "config" / "known_gateways"
    options = {
        "target": server.address,
        "token": TOKEN,
        "pool": 3,
        "trust_on_first_use": True,
        "known_gateways": str(known),
    }
    async with tls_gateway(make_gateway, certs.server) as gw:
        tunnel = gw.tunnel_address
        for _ in range(2):  # first use records; a second run finds the same certificate
            async with Client(gateway=tunnel, **options) as client:
                with anyio.fail_after(5):
                    await client.wait_ready()
                assert (await get(gw.address, "/ping")).body == b"pong"
    assert known.read_text() == f"{tunnel} {certs.server.fingerprint}\n"  # one line, pool of 3
    assert len(logs.matching("trusting gateway", tunnel, "on first use")) == 1

    # The same address now answers with another certificate.
    known.write_text(f"# comment\nother:1 sha256:{'0' * 64}\n{tunnel} {certs.server.fingerprint}\n")
    async with tls_gateway(make_gateway, certs.other, tunnel_listen=tunnel):
        error = await refused(Client(gateway=tunnel, **options))
    message = str(error)
    assert "CERTIFICATE HAS CHANGED" in message
    assert f"first showed {certs.server.fingerprint} ({known}, line 3)" in message
    assert f"now shows {certs.other.fingerprint}" in message
    assert f"delete line 3 of {known}" in message
    assert f"--fingerprint {certs.other.fingerprint}" in message
    assert known.read_text().count(tunnel) == 1  # nothing was overwritten


async def test_untrusted_ca_is_a_clear_error_and_the_client_keeps_trying(
    certs: Certs, make_gateway: GatewayFactory, server: Server, logs: LogWatch
) -> None:
    async with (
        tls_gateway(make_gateway, certs.stranger) as gw,
        Client(
            gateway=gw.tunnel_address,
            target=server.address,
            token=TOKEN,
            pool=1,
            max_backoff=0.2,
            ca=certs.ca,
        ) as client,  # fmt: skip
    ):
        line = await logs.wait_for("retrying in")
        assert "the gateway's certificate is not trusted" in line
        assert "check --ca" in line
        assert client.idle_count == 0


async def test_plain_client_against_a_tls_tunnel_port_fails_clearly(
    certs: Certs, make_gateway: GatewayFactory, server: Server, logs: LogWatch
) -> None:
    """No hang: the gateway gives up on the TLS handshake, both sides say why in one line."""
    async with (
        tls_gateway(make_gateway, certs.server, handshake_timeout=0.3) as gw,
        Client(
            gateway=gw.tunnel_address,
            target=server.address,
            token=TOKEN,
            pool=1,
            max_backoff=0.2,
        ) as client,  # fmt: skip
    ):
        line = await logs.wait_for("retrying in")
        assert "does it speak TLS, needing --tls?" in line
        assert client.idle_count == 0
        gateway_line = await logs.wait_for("tunnel port: a TLS handshake failed")
        assert "longer than 0.3 s; closed (a client without TLS" in gateway_line
        assert gw.tunnel_conns == set()  # a failed handshake leaves nothing behind
    assert not [line for line in logs.lines if line.startswith(("ERROR", "CRITICAL"))]


async def test_tls_client_against_a_plain_tunnel_port_fails_clearly(
    certs: Certs, make_gateway: GatewayFactory, server: Server, logs: LogWatch
) -> None:
    async with (
        make_gateway() as gw,
        Client(
            gateway=gw.tunnel_address,
            target=server.address,
            token=TOKEN,
            pool=1,
            max_backoff=0.2,
            ca=certs.ca,
        ),  # fmt: skip
    ):
        line = await logs.wait_for("retrying in")
        assert "is the gateway's tunnel port serving TLS?" in line


# --- the public port over HTTPS -------------------------------------------------------------


@asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A private server that keeps each request head and answers ``pong``."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                heads.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", heads
    finally:
        server.close()


async def test_public_https_sets_x_forwarded_proto(
    certs: Certs, make_gateway: GatewayFactory, logs: LogWatch
) -> None:
    async with (
        recording_server() as (target, heads),
        make_gateway(
            public_tls_cert=certs.server.cert, public_tls_key=certs.server.key, header_timeout=0.3
        ) as gw,
        Client(gateway=gw.tunnel_address, target=target, token=TOKEN, pool=1) as client,
    ):
        assert gw.public_scheme == "https"
        with anyio.fail_after(5):
            await client.wait_ready()
        assert await https_get(gw.address, certs.ca) == (200, b"pong")
        assert b"\r\nX-Forwarded-Proto: https\r\n" in heads[0]

        # Plain HTTP to the HTTPS port: closed, one line, nothing reaches the client.
        reader, writer = await asyncio.open_connection(*gw.address.rsplit(":", 1))
        writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        with anyio.fail_after(5):
            assert b"pong" not in await reader.read()
        writer.close()
        await logs.wait_for("public port: a TLS handshake failed or took longer than 0.3 s")
        assert len(heads) == 1
    assert logs.matching("gateway listening: callers on", "; HTTPS on the public port")


async def test_https_and_a_tls_tunnel_together_carry_big_bodies_on_one_connection(
    certs: Certs, make_gateway: GatewayFactory, make_client: ClientFactory
) -> None:
    """Both ports over TLS: 1 MiB up and back, then keep-alive, on one caller connection."""
    body = os.urandom(1 << 20)
    async with (
        make_gateway(
            tls_cert=certs.server.cert,
            tls_key=certs.server.key,
            public_tls_cert=certs.server.cert,
            public_tls_key=certs.server.key,
        ) as gw,
        make_client(gw, ca=certs.ca),
    ):
        # A corked port would hold each handshake flight for 200 ms (test_last_answer.py).
        assert not gw.callers_corked
        host, _, port = gw.address.rpartition(":")
        context = ssl.create_default_context(cafile=certs.ca)
        reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
        connection = Connection(reader, writer)
        try:
            with anyio.fail_after(10):
                echoed = await connection.request("POST", "/echo", body=body)
                assert (echoed.status, echoed.body == body) == (200, True)
                again = await connection.request("GET", "/ping")
                assert (again.status, again.body) == (200, b"pong")
        finally:
            await connection.close()


# --- settings and the command line ----------------------------------------------------------


def test_tls_settings_are_checked(certs: Certs, tmp_path: Path) -> None:
    bad = {
        "--tls-cert needs --tls-key too": {"tls_cert": certs.server.cert},
        "--public-tls-key needs --public-tls-cert too": {"public_tls_key": certs.server.key},
        f"--tls-key: no such file: {tmp_path}/nope": {
            "tls_cert": certs.server.cert,
            "tls_key": f"{tmp_path}/nope",
        },
        f"cannot load the certificate {certs.server.cert} with its key": {
            "tls_cert": certs.server.cert,
            "tls_key": certs.other.key,
        },
    }
    for message, options in bad.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            GatewaySettings(**options)  # type: ignore[arg-type]

    base = {"token": TOKEN}
    with pytest.raises(ConfigError, match="--fingerprint: expected sha256:HEX"):
        ClientSettings(fingerprint="md5:abcd", **base)
    with pytest.raises(ConfigError, match="64 hex digits"):
        ClientSettings(fingerprint="sha256:abcd", **base)
    with pytest.raises(ConfigError, match="--ca and --fingerprint exclude each other"):
        ClientSettings(ca=certs.ca, fingerprint=certs.server.fingerprint, **base)
    with pytest.raises(ConfigError, match=f"--ca: cannot load {certs.server.key}"):
        ClientSettings(ca=certs.server.key, **base)
    with pytest.raises(ConfigError, match="--ca: no such file"):
        ClientSettings(ca=f"{tmp_path}/nope", **base)
    assert ClientSettings(trust_on_first_use=True, **base).tls
    assert not ClientSettings(**base).tls


def test_cert_without_key_exits_2_with_one_line(
    certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["gateway", "--tls-cert", certs.server.cert])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err == "revgw gateway: error: --tls-cert needs --tls-key too\n"


async def test_cli_client_stops_with_exit_1_when_the_certificate_changed(
    certs: Certs, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """The real command (on uvloop where installed): refused, one message, exit 1, no retry loop."""
    async with tls_gateway(make_gateway, certs.other) as gw:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REVGW_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "revgw", "client", "--gateway", gw.tunnel_address,
            "--token", TOKEN, "--fingerprint", certs.server.fingerprint,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        with anyio.fail_after(15):
            _, err = await process.communicate()
    assert process.returncode == 1
    text = err.decode()
    assert f"presented certificate {certs.other.fingerprint}" in text
    assert "retrying" not in text
