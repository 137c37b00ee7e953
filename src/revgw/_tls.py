"""TLS for both listeners and for the client's dial, and the client's trust in a gateway.

The client trusts a gateway in one of three ways: a CA (the system's, or
``--ca``) that signed the certificate for its name; a pinned SHA-256 of the
certificate itself (``--fingerprint``); or the fingerprint it saw the first
time (``--trust-on-first-use``, kept in a known-gateways file). Pins are
checked in ``connection_made``, before the client reads the CHALLENGE, so
nothing derived from the token ever goes to an unproven gateway.

On the gateway, ``TlsHandOff`` builds the real protocol only once a TLS
handshake is done: the loop builds protocols before the handshake and never
tells one that its handshake failed, so it would be neither logged nor let go of.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import ssl
from collections.abc import Callable
from pathlib import Path

from ._address import Address
from ._errors import AccessDenied, ConfigError, ProtocolError

log = logging.getLogger("revgw.tls")

_HEX_PIN = re.compile(r"[0-9a-f]{64}")


class UntrustedGateway(AccessDenied):
    """The gateway's certificate does not match the pin or the known-gateways file.

    Retrying cannot help (and could mean talking to an attacker), so the client stops.
    """


class TlsFailed(ProtocolError):
    """The TLS handshake with the gateway failed (bad certificate, wrong CA, not TLS...)."""


# --- fingerprints -----------------------------------------------------------------------


def fingerprint_of(der: bytes) -> str:
    """``sha256:<64 hex>`` of a DER certificate: the form every flag and file uses."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def parse_fingerprint(text: str, flag: str = "--fingerprint") -> str:
    """Accept ``sha256:HEX`` (colons between bytes allowed, any case); return the canonical form."""
    algorithm, sep, digest = text.strip().partition(":")
    if not sep or algorithm.lower() != "sha256":
        raise ConfigError(f"{flag}: expected sha256:HEX (the certificate's SHA-256), not {text!r}")
    digest = digest.replace(":", "").lower()
    if not _HEX_PIN.fullmatch(digest):
        raise ConfigError(f"{flag}: a sha256 fingerprint is 64 hex digits, not {digest!r}")
    return "sha256:" + digest


def file_fingerprint(cert_file: str) -> str:
    """Fingerprint of the first (leaf) certificate in a PEM file."""
    text = Path(cert_file).read_text("ascii", "replace")
    end = "-----END CERTIFICATE-----"
    first = text[text.index("-----BEGIN CERTIFICATE-----") : text.index(end) + len(end)]
    return fingerprint_of(ssl.PEM_cert_to_DER_cert(first))


# --- contexts ---------------------------------------------------------------------------


def check_pair(cert: str | None, key: str | None, cert_flag: str, key_flag: str) -> bool:
    """Both or neither, and both files exist; True when TLS is asked for."""
    if (cert is None) != (key is None):
        given, missing = (cert_flag, key_flag) if cert is not None else (key_flag, cert_flag)
        raise ConfigError(f"{given} needs {missing} too")
    if cert is None or key is None:
        return False
    for flag, name in ((cert_flag, cert), (key_flag, key)):
        if not os.path.isfile(name):
            raise ConfigError(f"{flag}: no such file: {name}")
    return True


def server_context(
    cert: str, key: str, cert_flag: str, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ server context; ConfigError naming the files if they do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"{cert_flag}: cannot load the certificate {cert} with its key: {reason}"
        ) from exc
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def load_ca(ca: str) -> ssl.SSLContext:
    """A verifying client context trusting only ``ca``; ConfigError naming it otherwise."""
    if not os.path.isfile(ca):
        raise ConfigError(f"--ca: no such file: {ca}")
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"--ca: cannot load {ca} as PEM certificates: {reason}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# --- the client's trust -----------------------------------------------------------------


class GatewayTrust:
    """How one client dials one gateway over TLS, and whether it believes the answer."""

    def __init__(
        self,
        gateway: Address,
        *,
        ca: str | None = None,
        fingerprint: str | None = None,
        trust_on_first_use: bool = False,
        known_gateways: str = "",
        server_name: str | None = None,
    ) -> None:
        self.key = (
            f"[{gateway.host}]:{gateway.port}"
            if ":" in gateway.host
            else (f"{gateway.host.lower()}:{gateway.port}")
        )
        self.pin = fingerprint
        self.tofu = trust_on_first_use
        self.known_file = Path(os.path.expanduser(known_gateways)) if known_gateways else None
        self.server_hostname = server_name or gateway.host
        if fingerprint or trust_on_first_use:
            # The pin replaces CA and name checks: the certificate itself is what we trust.
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
            self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        elif ca:
            self.context = load_ca(ca)
        else:
            self.context = ssl.create_default_context()
            self.context.minimum_version = ssl.TLSVersion.TLSv1_2

    def check(self, transport: asyncio.BaseTransport) -> None:
        """After the handshake: UntrustedGateway unless the certificate is the expected one."""
        if self.pin is None and not self.tofu:
            return  # the CA and hostname were verified by the handshake itself
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise UntrustedGateway(f"the gateway {self.key} showed no certificate")
        seen = fingerprint_of(der)
        if self.pin is not None:
            if not hmac.compare_digest(seen, self.pin):
                raise UntrustedGateway(
                    f"the gateway {self.key} presented certificate {seen}, not the pinned "
                    f"--fingerprint {self.pin}; refusing to connect"
                )
            return
        self._check_known(seen)

    def _check_known(self, seen: str) -> None:
        assert self.known_file is not None
        path = self.known_file
        try:
            lines = path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        except OSError as exc:
            raise UntrustedGateway(f"cannot read the known-gateways file {path}: {exc}") from exc
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if len(fields) != 2 or line.lstrip().startswith("#") or fields[0] != self.key:
                continue
            if hmac.compare_digest(fields[1].lower(), seen):
                return
            raise UntrustedGateway(
                f"THE GATEWAY'S CERTIFICATE HAS CHANGED. {self.key} first showed {fields[1]} "
                f"({path}, line {number}) and now shows {seen}. Someone may be intercepting "
                f"the connection, or the gateway's certificate was replaced. If you replaced "
                f"it on purpose, delete line {number} of {path} (it will be trusted again on "
                f"first use) or run with --fingerprint {seen}. Refusing to connect"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as file:
                file.write(f"{self.key} {seen}\n")
        except OSError as exc:
            raise UntrustedGateway(
                f"cannot record the gateway's fingerprint in {path}: {exc}"
            ) from exc
        log.warning(
            "trusting gateway %s on first use: certificate %s, recorded in %s",
            self.key,
            seen,
            path,
        )


def describe_tls_error(exc: ssl.SSLError) -> str:
    """One line for a failed client handshake, with a hint for the usual causes."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return (
            f"TLS: the gateway's certificate is not trusted ({detail}); "
            "check --ca, --server-name, or pin it with --fingerprint"
        )
    reason = (exc.reason or str(exc)).replace("_", " ").lower()
    if "wrong version" in reason or "record layer" in reason or "packet length" in reason:
        return f"TLS handshake failed ({reason}): is the gateway's tunnel port serving TLS?"
    return f"TLS handshake with the gateway failed ({reason})"


# --- the gateway's side -----------------------------------------------------------------


class TlsHandOff(asyncio.Protocol):
    """Stands in for the real protocol during the server's TLS handshake.

    asyncio (and uvloop) build the protocol before the handshake and never
    tell it when the handshake fails. So the real one is built only once the
    handshake is done, and a handshake that never finishes is logged in one
    line (without the reason: the loop keeps it to itself; the client sees it).
    """

    def __init__(
        self, factory: Callable[[], asyncio.Protocol], timeout: float, port_name: str
    ) -> None:
        self._factory = factory
        self._port_name = port_name
        self._timeout = timeout
        # A little after the loop's own handshake timeout has fired.
        self._watch = asyncio.get_running_loop().call_later(timeout + 0.2, self._failed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._watch.cancel()
        app = self._factory()
        transport.set_protocol(app)
        app.connection_made(transport)

    def _failed(self) -> None:
        log.warning(
            "%s: a TLS handshake failed or took longer than %g s; closed "
            "(a client without TLS, or one that does not trust this certificate?)",
            self._port_name,
            self._timeout,
        )
