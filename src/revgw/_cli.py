"""``revgw <role>``: parse settings, run the role, exit with a meaningful code.

Flags are made from the settings dataclasses, so every setting has exactly
one name, one help text and one ``REVGW_*`` variable. Exit codes: 0 after
SIGINT/SIGTERM or a finished run, 1 when the role fails (denied token, port
in use, a producer request failed), 2 for a bad flag or value.
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import json
import logging
import os
import signal
import sys
import time
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, NoReturn

import anyio

from revgw_examples.producer import ProducerSettings
from revgw_examples.producer import run as run_producer
from revgw_examples.server import ServerSettings, serve_forever

from . import COMPILED, __version__, _config
from ._address import parse_address
from ._client import Client
from ._config import LogSettings
from ._demo import DemoSettings, run_demo
from ._errors import AccessDenied, ConfigError
from ._gateway import Gateway
from ._loop import backend_options
from ._settings import ClientSettings, GatewaySettings
from ._tls import UntrustedGateway
from ._util import errors_in

ENV_PREFIX = "REVGW_"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, without the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# --- settings dataclass <-> command line ------------------------------------------------


def _field_type(cls: type, field: dataclasses.Field[Any]) -> tuple[Callable[[str], Any], bool]:
    """How to convert one flag's text, and whether the flag repeats."""
    hint = typing.get_type_hints(cls)[field.name]
    if typing.get_origin(hint) is tuple:
        return str, True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint is bool:
        return _boolean, False
    if typing.get_origin(hint) is Literal:
        return _choice(typing.get_args(hint)), False
    return hint, False


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text.lower() not in options:
            raise ValueError(text)
        return text.lower()

    convert.__name__ = f"choice ({'|'.join(options)})"
    return convert


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _convert(convert: Callable[[str], Any], text: str, flag: str, env: str = "") -> Any:
    try:
        return convert(text)
    except ValueError:
        kind = getattr(convert, "__name__", "value")
        where = f" (from {env})" if env else ""
        raise ConfigError(f"{flag}: {text!r} is not a valid {kind}{where}") from None


def add_settings(parser: argparse.ArgumentParser, cls: type) -> None:
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        env = ENV_PREFIX + field.name.upper()
        convert, repeats = _field_type(cls, field)
        default = field.default if field.default is not dataclasses.MISSING else ()
        shown = "none" if default in (None, (), "") or field.name == "token" else default
        help_text = f"{field.metadata.get('help', '')} (env {env}; default: {shown})"
        parser.add_argument(
            flag,
            dest=field.name,
            metavar=field.metadata.get("metavar") or field.name.upper(),
            action="append" if repeats else "store",
            type=str,
            default=None,
            help=help_text,
            # A yes/no setting reads as a plain switch (--tls), or takes a value (--tls no).
            nargs="?" if convert is _boolean else None,
            const="true" if convert is _boolean else None,
        )


def settings_from(cls: type, args: argparse.Namespace, environ: dict[str, str]) -> Any:
    """Build ``cls`` from defaults < ``REVGW_*`` environment < flags."""
    return resolve(cls, args, environ)[0]


def resolve(
    cls: type,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    config: Mapping[str, Any] | None = None,
    config_path: str = "",
) -> tuple[Any, dict[str, str]]:
    """Build ``cls`` from defaults < ``config`` (a file's values) < ``REVGW_*`` < flags.

    Also returns where each setting came from, for ``--print-config``.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        env = ENV_PREFIX + field.name.upper()
        convert, repeats = _field_type(cls, field)
        given = getattr(args, field.name, None)
        env_text = environ.get(env)
        if given is not None:
            texts, sources[field.name], from_env = (given if repeats else [given]), "flag", ""
        elif env_text is not None:
            texts = [t for t in env_text.split(",") if t.strip()] if repeats else [env_text]
            sources[field.name], from_env = f"env {env}", env
        elif config and field.name in config:
            values[field.name] = config[field.name]
            sources[field.name] = f"file {config_path}"
            continue
        else:
            sources[field.name] = "default"
            continue
        if repeats:
            values[field.name] = tuple(_convert(convert, t, flag, from_env) for t in texts)
        else:
            values[field.name] = _convert(convert, texts[0], flag, from_env)
    return cls(**values), sources


# --- running a role --------------------------------------------------------------------


def _setup_logging(log: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log.log_format == "json" else _Formatter())
    root = logging.getLogger("revgw")
    root.handlers[:] = [handler]
    root.setLevel(log.log_level.upper())
    root.propagate = False
    # Off means the gateway does not even format the line (it checks isEnabledFor first).
    logging.getLogger("revgw.access").setLevel(
        logging.NOTSET if log.access_log else logging.CRITICAL + 1
    )


# LogRecord attributes that are not a caller's ``extra=`` fields.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "role",
}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, role, message, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "role": record.name.removeprefix("revgw."),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = value if isinstance(value, int | float | str | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _Formatter(logging.Formatter):
    """``12:00:01.234 gateway  [default#3] paired ...``: time, role, message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(role)-8s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.role = record.name.removeprefix("revgw.")
        if record.levelno >= logging.WARNING:
            record.msg = f"{record.levelname.lower()}: {record.msg}"
        return super().format(record)


# The drains the running role registered (``_on_sigterm``); shared by its tasks.
_drains: contextvars.ContextVar[list[Callable[[], Awaitable[None]]]] = contextvars.ContextVar(
    "revgw_drains"
)


def _on_sigterm(drain: Callable[[], Awaitable[None]]) -> None:
    """Let SIGTERM run ``drain`` (finish what is in flight, up to --grace) before stopping."""
    _drains.get().append(drain)


async def _until_signal(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main``; SIGINT or SIGTERM cancels it and the exit code is 0.

    SIGTERM (systemd, docker, kubernetes) first runs the role's drain if it
    registered one; SIGINT (Ctrl-C: a person wants it gone) and a second
    SIGTERM stop at once.
    """
    code = 0
    drains: list[Callable[[], Awaitable[None]]] = []
    _drains.set(drains)
    draining = False
    async with anyio.create_task_group() as tg:

        async def drain() -> None:
            for one in drains:
                await one()
            tg.cancel_scope.cancel()

        async def watch_signals() -> None:
            nonlocal draining
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGTERM and drains and not draining:
                        logging.getLogger("revgw").info(
                            "%s received; stopping once in-flight requests finish"
                            " (a second signal stops at once)",
                            name,
                        )
                        draining = True
                        tg.start_soon(drain)
                        continue
                    logging.getLogger("revgw").info("%s received; stopping", name)
                    tg.cancel_scope.cancel()
                    return

        async def run_main() -> None:
            nonlocal code
            code = await main()
            tg.cancel_scope.cancel()

        tg.start_soon(watch_signals)
        tg.start_soon(run_main)
    return code


def _run(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main``; a lone error re-raises as itself, however deep in task groups it was.

    A role nests task groups (the demo: server, gateway, clients), so an error
    such as "port in use" arrives wrapped once per level; ``main()`` turns it
    into one line only if it sees the error itself.
    """
    try:
        return anyio.run(_until_signal, main, backend="asyncio", backend_options=backend_options())
    except BaseExceptionGroup as group:
        found = errors_in(group)
        if len(found) == 1 and isinstance(found[0], Exception):
            raise found[0] from None
        raise


async def _gateway(settings: GatewaySettings) -> int:
    async with Gateway(settings) as gateway:
        _on_sigterm(gateway.drain)
        if gateway.settings.tokens is not None:
            await _reload_on_sighup(gateway)  # runs until cancelled
        if settings.token is None:
            # Printed once the port is bound: "--tunnel-listen ...:0" has its real port
            # only now, and a gateway that cannot listen must not hand out a command.
            host, port = parse_address(gateway.tunnel_address)
            wildcard = host in ("0.0.0.0", "::", "")
            where = f"<this-host>:{port}" if wildcard else gateway.tunnel_address
            print(
                "revgw gateway: no --token given, so this gateway made one. Start clients with:\n"
                f"  revgw client --gateway {where} --token {gateway.token}",
                flush=True,
            )
        await anyio.sleep_forever()
    return 0


async def _reload_on_sighup(gateway: Gateway) -> None:
    """``kill -HUP``: re-read --tokens; a bad file keeps the tokens in use, saying why."""
    log = logging.getLogger("revgw.gateway")
    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        # Logged once the handler is in place: a SIGHUP from now on reloads, never kills.
        log.info(
            "scoped tokens: %d tenant(s) from %s; SIGHUP reloads it",
            len(gateway.tokens),
            gateway.settings.tokens,
        )
        async for _ in signals:
            try:
                summary = gateway.reload_tokens()
            except ConfigError as exc:
                log.warning("SIGHUP: kept the tokens in use: %s", exc)
            else:
                log.info("SIGHUP: reloaded %s: %s", gateway.settings.tokens, summary)


async def _client(settings: ClientSettings) -> int:
    async with Client(settings) as client:
        _on_sigterm(client.drain)
        await anyio.sleep_forever()
    return 0


async def _server(settings: Any) -> int:
    await serve_forever(settings)
    return 0


async def _producer(settings: Any) -> int:
    return await run_producer(settings)


async def _demo(settings: DemoSettings) -> int:
    return await run_demo(settings)


def _roles() -> dict[str, tuple[type, Callable[[Any], Awaitable[int]], str]]:
    return {
        "gateway": (
            GatewaySettings,
            _gateway,
            "the public gateway: HTTP for callers, a tunnel port for clients",
        ),
        "client": (
            ClientSettings,
            _client,
            "keep a pool of connections at the gateway, splice them to the target",
        ),
        "server": (
            ServerSettings,
            _server,
            "the demo private server (/ping, /bytes/N, /echo, /slow, /status/N)",
        ),
        "producer": (
            ProducerSettings,
            _producer,
            "the demo caller: one request per interval, one line per answer",
        ),
        "demo": (DemoSettings, _demo, "server, gateway, two clients and a producer in one process"),
    }


# What ``--version`` says runs (setup.py compiles the hot path where it can).
BUILD = "hot path compiled by mypyc" if COMPILED else "plain Python"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="revgw",
        description="Reach a service behind NAT through a public gateway and a pool of "
        "pre-dialled tunnel connections.",
    )
    parser.add_argument("--version", action="version", version=f"revgw {__version__} ({BUILD})")
    sub = parser.add_subparsers(dest="role", metavar="ROLE", required=True)
    for name, (cls, _, summary) in _roles().items():
        role_parser = sub.add_parser(name, help=summary, description=summary)
        add_settings(role_parser, cls)
        add_settings(role_parser, LogSettings)
        role_parser.add_argument(
            "--config",
            metavar="FILE",
            help="TOML file of settings (keys: the settings' names; a [role] table wins over "
            "the top level); REVGW_* variables and flags win over it (env REVGW_CONFIG)",
        )
        role_parser.add_argument(
            "--print-config",
            action="store_true",
            help="print the effective settings and where each came from, then exit",
        )
    return parser


def _show(value: Any) -> str:
    """A setting's value as TOML (None has no TOML spelling: shown as a comment)."""
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _print_config(settings: list[tuple[Any, dict[str, str]]]) -> None:
    """``name = value  # source`` lines: paste-able into a config file, secrets hidden."""
    for values, sources in settings:
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            shown = '"***"' if field.name == "token" and value is not None else _show(value)
            line = f"{field.name} = {shown}" if value is not None else f"# {field.name} unset"
            print(f"{line}  # {sources[field.name]}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"revgw {args.role}"
    cls, role_main, _ = _roles()[args.role]
    environ = dict(os.environ)
    config_path = args.config or environ.get(ENV_PREFIX + "CONFIG") or ""
    try:
        config: dict[str, Any] = {}
        if config_path:
            fields = _config.hints(cls) | _config.hints(LogSettings)
            config = _config.read(config_path, args.role, fields)
        settings, sources = resolve(cls, args, environ, config, config_path)
        log, log_sources = resolve(LogSettings, args, environ, config, config_path)
    except (ConfigError, TypeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.print_config:
        _print_config([(settings, sources), (log, log_sources)])
        sys.exit(0)
    _setup_logging(log)
    try:
        code = _run(lambda: role_main(settings))
    except UntrustedGateway as exc:  # our verdict on the gateway, not the gateway's on us
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = 1
    except AccessDenied as exc:
        print(f"{prog}: the gateway denied this client: {exc}", file=sys.stderr)
        code = 1
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = 1
    except OSError as exc:  # e.g. a port in use, from a role that does not say which itself
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)
