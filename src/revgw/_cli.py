"""``revgw <role>``: parse settings, run the role, exit with a meaningful code.

Flags are made from the settings dataclasses, so every setting has exactly
one name, one help text and one ``REVGW_*`` variable. Exit codes: 0 after
SIGINT/SIGTERM or a finished run, 1 when the role fails (denied token, port
in use, a producer request failed), 2 for a bad flag or value.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import anyio

from revgw_examples.producer import ProducerSettings
from revgw_examples.producer import run as run_producer
from revgw_examples.server import ServerSettings, serve_forever

from ._address import parse_address
from ._client import Client
from ._demo import DemoSettings, run_demo
from ._errors import AccessDenied, ConfigError
from ._gateway import Gateway
from ._loop import backend_options
from ._settings import ClientSettings, GatewaySettings
from ._tls import UntrustedGateway
from ._util import errors_in

ENV_PREFIX = "REVGW_"
LOG_LEVELS = ("debug", "info", "warning", "error")


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
    return hint, False


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _convert(convert: Callable[[str], Any], text: str, flag: str) -> Any:
    try:
        return convert(text)
    except ValueError:
        kind = getattr(convert, "__name__", "value")
        raise ConfigError(f"{flag}: {text!r} is not a valid {kind}") from None


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
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        convert, repeats = _field_type(cls, field)
        given = getattr(args, field.name, None)
        env_text = environ.get(ENV_PREFIX + field.name.upper())
        if given is not None:
            texts = given if repeats else [given]
        elif env_text is not None:
            texts = [t for t in env_text.split(",") if t.strip()] if repeats else [env_text]
        else:
            continue
        if repeats:
            values[field.name] = tuple(_convert(convert, t, flag) for t in texts)
        else:
            values[field.name] = _convert(convert, texts[0], flag)
    return cls(**values)


# --- running a role --------------------------------------------------------------------


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("revgw")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class _Formatter(logging.Formatter):
    """``12:00:01.234 gateway  [default#3] paired ...``: time, role, message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(role)-8s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.role = record.name.removeprefix("revgw.")
        if record.levelno >= logging.WARNING:
            record.msg = f"{record.levelname.lower()}: {record.msg}"
        return super().format(record)


async def _until_signal(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main``; SIGINT or SIGTERM cancels it and the exit code is 0."""
    code = 0
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logging.getLogger("revgw").info(
                        "%s received; stopping", signal.Signals(signum).name
                    )
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
    await Client(settings).run()
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="revgw",
        description="Reach a service behind NAT through a public gateway and a pool of "
        "pre-dialled tunnel connections.",
    )
    sub = parser.add_subparsers(dest="role", metavar="ROLE", required=True)
    for name, (cls, _, summary) in _roles().items():
        role_parser = sub.add_parser(name, help=summary, description=summary)
        add_settings(role_parser, cls)
        role_parser.add_argument(
            "--log-level",
            default=os.environ.get(ENV_PREFIX + "LOG_LEVEL", "info").lower(),
            choices=LOG_LEVELS,
            help="how much to log (env REVGW_LOG_LEVEL; default: info)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"revgw {args.role}"
    if args.log_level not in LOG_LEVELS:  # argparse checks choices only for a given flag
        print(
            f"{prog}: error: {ENV_PREFIX}LOG_LEVEL: {args.log_level!r} is not one of "
            f"{', '.join(LOG_LEVELS)}",
            file=sys.stderr,
        )
        sys.exit(2)
    cls, role_main, _ = _roles()[args.role]
    try:
        settings = settings_from(cls, args, dict(os.environ))
    except (ConfigError, TypeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    _setup_logging(args.log_level)
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
