"""Scoped tokens and per-tunnel access rules, sans-IO.

A gateway holds one or more *tenants*. Each has a token and the tunnel names
and Host names that token may serve; a handshake is checked against the
tenant its ``key`` names (``_handshake.token_key``), so one leaked token
exposes one tenant, never the whole gateway. ``--token`` is the one-tenant
shorthand whose grants are unlimited; ``--tokens FILE`` reads TOML::

    [tenant.alpha]
    token = "..."
    tunnels = ["alpha"]
    hosts = ["a.example.com", "*.a.example.com"]
    basic_auth = ["user:pass"]          # optional: wins over what clients declare
    allow_cidr = ["203.0.113.0/24"]     # optional: wins over what clients declare

Host patterns: ``*.a.example.com`` grants every name *under* a.example.com
(any depth), not a.example.com itself; a client may also claim the
wildcard itself, or a narrower one, such as ``*.x.a.example.com``.

Access rules (``Access``) decide which callers reach a tunnel: allowed
networks (else 403) and Basic credentials (else 401). Credentials travel and
are kept only as salted PBKDF2 hashes, so a gateway you do not fully trust
never learns the passwords; each verified ``Authorization`` value is
remembered (bounded), so only a new guess costs a hash.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import AccessDenied, ConfigError
from ._handshake import MAX_CIDRS, MAX_CREDENTIALS, check_identity, token_key

HASH_SCHEME = "pbkdf2-sha256"
HASH_ITERATIONS = 10_000  # ~3 ms a new guess; verified values are cached
MAX_ITERATIONS = 200_000  # a client cannot make the gateway hash for longer than this
_CACHE_SIZE = 256

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- hosts ----------------------------------------------------------------------


def host_granted(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` (a name, or a ``*.`` wildcard a client claims) is within ``patterns``."""
    for pattern in patterns:
        if host == pattern:
            return True
        if pattern.startswith("*."):
            suffix = pattern[1:]  # ".a.example.com"
            name = host[2:] if host.startswith("*.") else host
            if name.endswith(suffix):
                return True
    return False


# --- credentials ------------------------------------------------------------------


def _salt(tunnel: str, user: str) -> str:
    """Deterministic per tunnel and user: two clients of one tunnel declare equal hashes."""
    return hashlib.sha256(f"revgw basic salt\n{tunnel}\n{user}".encode()).hexdigest()[:16]


def hash_credential(tunnel: str, credential: str, iterations: int = HASH_ITERATIONS) -> str:
    """``USER:PASS`` -> ``pbkdf2-sha256$ITER$SALT$HASH`` (what crosses the wire)."""
    user = credential.partition(":")[0]
    salt = _salt(tunnel, user)
    digest = hashlib.pbkdf2_hmac("sha256", credential.encode(), salt.encode(), iterations, 16)
    return f"{HASH_SCHEME}${iterations}${salt}${digest.hex()}"


def check_credential(credential: str) -> None:
    """Raise ValueError unless ``credential`` is a usable ``USER:PASS``."""
    user, sep, password = credential.partition(":")
    if not sep or not user or not password:
        raise ValueError("basic auth must be USER:PASS, both non-empty")
    if not credential.isascii() or not credential.isprintable() or "," in credential:
        raise ValueError(f"basic auth for user {user!r} must be printable ASCII without commas")


def check_hash(value: str) -> None:
    """Raise ValueError unless ``value`` is a hash as ``hash_credential`` makes it."""
    parts = value.split("$")
    if len(parts) != 4 or parts[0] != HASH_SCHEME:
        raise ValueError(f"{value[:40]!r} is not a {HASH_SCHEME}$ITER$SALT$HASH credential")
    try:
        iterations = int(parts[1])
        bytes.fromhex(parts[2])
        digest = bytes.fromhex(parts[3])
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not a valid credential hash") from None
    if not 1000 <= iterations <= MAX_ITERATIONS or not 8 <= len(digest) <= 64 or not parts[2]:
        raise ValueError(f"{value[:40]!r}: iterations or sizes out of range")


def _verify(credential: bytes, stored: str) -> bool:
    _, iterations, salt, expected = stored.split("$")
    digest = hashlib.pbkdf2_hmac(
        "sha256", credential, salt.encode(), int(iterations), len(expected) // 2
    )
    return hmac.compare_digest(digest.hex(), expected)


def check_network(text: str) -> Network:
    """Parse one CIDR (a bare address means just that address); ValueError if unusable."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a network such as 10.0.0.0/8 or 2001:db8::/32") from None


# --- access rules ---------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """Who may reach a tunnel: callers from ``networks`` (if any) with one of ``basic`` (if any)."""

    basic: tuple[str, ...] = ()  # credential hashes
    networks: tuple[Network, ...] = ()
    _verified: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @property
    def empty(self) -> bool:
        return not self.basic and not self.networks

    def describe(self) -> str:
        parts = []
        if self.basic:
            parts.append(f"{len(self.basic)} basic-auth credential(s)")
        if self.networks:
            parts.append("callers from " + ", ".join(str(n) for n in self.networks))
        return "; ".join(parts) or "open"

    def address_allowed(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def authorized(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries one of the credentials."""
        if not self.basic:
            return True
        if authorization is None:
            return False
        text = authorization.decode("latin-1").strip()
        cached = self._verified.get(text)
        if cached is not None:
            return cached
        scheme, _, encoded = text.partition(" ")
        ok = False
        if scheme.lower() == "basic":
            try:
                credential = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                credential = b""
            # every stored hash is checked: no early exit telling which user exists
            ok = (
                any([_verify(credential, stored) for stored in self.basic]) if credential else False
            )
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[text] = ok
        return ok


@functools.lru_cache(maxsize=8)
def declared_fields(
    tunnel: str, basic: tuple[str, ...], cidrs: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A client's AUTH fields from its settings: passwords become hashes here, once."""
    if len(basic) > MAX_CREDENTIALS or len(cidrs) > MAX_CIDRS:
        raise ValueError(f"at most {MAX_CREDENTIALS} credentials and {MAX_CIDRS} networks")
    hashes = tuple(sorted(hash_credential(tunnel, c) for c in basic))
    return hashes, tuple(str(n) for n in sorted({check_network(c) for c in cidrs}, key=str))


def access_from_hello(basic: tuple[str, ...], cidrs: tuple[str, ...]) -> Access:
    """The rules a client declared at handshake; AccessDenied if they are unusable."""
    try:
        for value in basic:
            check_hash(value)
        networks = tuple(sorted({check_network(c) for c in cidrs}, key=str))
    except ValueError as exc:
        raise AccessDenied(f"unusable access rules: {exc}") from None
    return Access(tuple(sorted(set(basic))), networks)


# --- tenants ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    """One token and what it may serve; ``None`` grants mean everything (``--token``)."""

    name: str
    token: str
    tunnels: tuple[str, ...] | None = None
    hosts: tuple[str, ...] | None = None
    basic_auth: tuple[str, ...] | None = None  # USER:PASS or hashes, from the file
    allow_cidr: tuple[Network, ...] | None = None

    @property
    def key(self) -> str:
        return token_key(self.token)

    def check(self, tunnel: str, hosts: Iterable[str]) -> None:
        """Raise AccessDenied naming the first tunnel or host this token does not grant."""
        if self.tunnels is not None and tunnel not in self.tunnels:
            raise AccessDenied(f"token for tenant '{self.name}' does not grant tunnel '{tunnel}'")
        if self.hosts is not None:
            for host in hosts:
                if not host_granted(host, self.hosts):
                    raise AccessDenied(
                        f"token for tenant '{self.name}' does not grant host '{host}'"
                    )

    def access_for(self, tunnel: str, declared: Access) -> Access:
        """The file's rules where it sets any (they win), else what the client declared."""
        if self.basic_auth is None and self.allow_cidr is None:
            return declared
        basic = tuple(
            sorted(
                c if c.startswith(HASH_SCHEME + "$") else hash_credential(tunnel, c)
                for c in self.basic_auth or ()
            )
        )
        return Access(basic, tuple(sorted(set(self.allow_cidr or ()), key=str)))


@dataclass(frozen=True)
class Tokens:
    """Every tenant of a gateway, found by the key a handshake names."""

    tenants: dict[str, Tenant]  # by key
    source: str = "--token"

    @classmethod
    def single(cls, token: str) -> Tokens:
        return cls({token_key(token): Tenant("default", token)})

    def find(self, key: str) -> Tenant | None:
        return self.tenants.get(key)

    def __len__(self) -> int:
        return len(self.tenants)


def parse_tokens(text: str, source: str) -> Tokens:
    """Parse a tokens file's TOML; ConfigError names ``source`` and the bad key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(data) - {"tenant"}
    if unknown:
        raise ConfigError(f"{source}: unknown key {sorted(unknown)[0]!r} (expected [tenant.NAME])")
    tenants_table = data.get("tenant")
    if not isinstance(tenants_table, dict) or not tenants_table:
        raise ConfigError(f"{source}: no [tenant.NAME] table")
    tenants: dict[str, Tenant] = {}
    for name, table in tenants_table.items():
        tenant = _tenant(source, name, table)
        if tenant.key in tenants:
            other = tenants[tenant.key].name
            raise ConfigError(f"{source}: tenant.{name}.token is the same as tenant.{other}'s")
        tenants[tenant.key] = tenant
    return Tokens(tenants, source)


def load_tokens(path: str) -> Tokens:
    """Read and parse a tokens file; ConfigError (naming the file) if unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read the tokens file: {reason}") from None
    return parse_tokens(text, path)


_KEYS = {"token", "tunnels", "hosts", "basic_auth", "allow_cidr"}


def _tenant(source: str, name: str, table: Any) -> Tenant:
    where = f"{source}: tenant.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
    token = table.get("token")
    if not isinstance(token, str) or len(token) < 16:
        raise ConfigError(f"{where}.token: must be a string of at least 16 characters")
    tunnels = _strings(where, "tunnels", table, required=True)
    hosts = _strings(where, "hosts", table, required=False) or ()
    for tunnel in tunnels or ():
        try:
            check_identity(tunnel, "x", ())
        except ValueError as exc:
            raise ConfigError(f"{where}.tunnels: {exc}") from None
    try:
        check_identity("x", "x", hosts)
    except ValueError as exc:
        raise ConfigError(f"{where}.hosts: {exc}") from None
    basic = _strings(where, "basic_auth", table, required=False)
    for credential in basic or ():
        try:
            if credential.startswith(HASH_SCHEME + "$"):
                check_hash(credential)
            else:
                check_credential(credential)
        except ValueError as exc:
            raise ConfigError(f"{where}.basic_auth: {exc}") from None
    cidr_texts = _strings(where, "allow_cidr", table, required=False)
    try:
        cidrs = None if cidr_texts is None else tuple(check_network(c) for c in cidr_texts)
    except ValueError as exc:
        raise ConfigError(f"{where}.allow_cidr: {exc}") from None
    return Tenant(name, token, tunnels, hosts, basic, cidrs)


def _strings(where: str, key: str, table: dict[str, Any], required: bool) -> tuple[str, ...] | None:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{key}: missing (a list of names)")
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key}: must be a list of strings")
    return tuple(value)
