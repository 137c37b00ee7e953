"""The ``revgw`` command line, run as a user runs it: ``python -m revgw <role> ...``.

Each test starts real processes (with a bound on every wait) and checks what
a user sees: exit codes, the lines on stdout and stderr, and that the ports
a role opens answer. Processes of one test run side by side where that is
simple, to keep the file quick.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from conftest import TOKEN, ClientFactory, GatewayFactory
from helpers import free_port, get
from revgw import COMPILED, ClientSettings, Gateway, GatewaySettings, __version__
from revgw._demo import DemoSettings
from revgw_examples.producer import ProducerSettings
from revgw_examples.server import Server, ServerSettings

STARTUP = 10  # seconds a process gets to say it is ready (interpreter start included)
TIME = r"^\d\d:\d\d:\d\d\.\d{3}"  # every log line starts with the time of day


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any REVGW_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVGW_")}
    env["COLUMNS"] = "200"  # help text unwrapped: one line per flag where it fits
    env.update(extra)
    return env


class Proc:
    """A running ``revgw`` process; its output lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = asyncio.Event()
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            asyncio.create_task(self._collect(process.stdout, self.out)),
            asyncio.create_task(self._collect(process.stderr, self.err)),
        ]

    def __repr__(self) -> str:
        return f"<Proc rc={self.process.returncode} out={self.out!r} err={self.err!r}>"

    async def _collect(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        while line := await stream.readline():
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            self._notify()
        self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def line(
        self, pattern: str, stream: str = "err", timeout: float = STARTUP
    ) -> re.Match[str]:
        """Wait for a line matching ``pattern``; fail if the process ends without one."""
        regex = re.compile(pattern)
        lines = self.err if stream == "err" else self.out
        with anyio.fail_after(timeout):
            while True:
                changed = self._changed
                for text in lines:
                    if match := regex.search(text):
                        return match
                if all(reader.done() for reader in self._readers):
                    raise AssertionError(f"ended without a line matching {pattern!r}: {self}")
                await changed.wait()

    async def finish(self, timeout: float = STARTUP) -> int:
        """Wait for the process to end by itself; its exit code."""
        with anyio.fail_after(timeout):
            code = await self.process.wait()
            await asyncio.gather(*self._readers)
        return code

    async def stop(self, signum: int) -> tuple[int, float]:
        """Send ``signum``; the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = await self.finish()
        return code, time.monotonic() - started

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await asyncio.gather(*self._readers)


@asynccontextmanager
async def revgw(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Proc]:
    """``python -m revgw *args``, killed (if still running) when the block ends."""
    env = dict(env or clean_env())
    if args[:1] in (("gateway",), ("demo",)):
        # A free admin port, not 9002: test runs (and a `make local`) may share this host.
        env.setdefault("REVGW_ADMIN", "127.0.0.1:0")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "revgw",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    proc = Proc(process)
    try:
        yield proc
    finally:
        await proc.kill()


async def run(*args: str, env: dict[str, str] | None = None) -> Proc:
    """Run a command that ends by itself (bounded); the finished Proc."""
    async with revgw(*args, env=env) as proc:
        await proc.finish()
    return proc


# --- --help ---------------------------------------------------------------------------------

ROLES: dict[str, type] = {
    "gateway": GatewaySettings,
    "client": ClientSettings,
    "server": ServerSettings,
    "producer": ProducerSettings,
    "demo": DemoSettings,
}


def shown_default(field: dataclasses.Field[Any]) -> str:
    if field.default is dataclasses.MISSING or field.default in (None, "") or field.name == "token":
        return "none"
    return str(field.default)


@pytest.mark.parametrize("role", list(ROLES))
async def test_help_lists_every_flag_with_its_env_variable_and_default(role: str) -> None:
    """``revgw <role> --help`` exits 0 and names each flag, its REVGW_ variable and default."""
    proc = await run(role, "--help")
    assert proc.process.returncode == 0, proc
    assert proc.err == []
    text = " ".join(" ".join(proc.out).split())  # unwrapped, single spaces
    options = text[text.index("options:") :]
    for field in dataclasses.fields(ROLES[role]):
        flag = "--" + field.name.replace("_", "-")
        env = "REVGW_" + field.name.upper()
        entry = (
            rf"{flag} \S+ (?:(?! --).)*?\(env {env}; default: {re.escape(shown_default(field))}\)"
        )
        assert re.search(entry, options), (flag, options)
    assert "--log-level" in options
    assert "REVGW_LOG_LEVEL" in options


async def test_version_names_the_build() -> None:
    """``revgw --version``: the version, and whether the hot path runs compiled."""
    proc = await run("--version")
    assert proc.process.returncode == 0, proc
    build = "hot path compiled by mypyc" if COMPILED else "plain Python"
    assert proc.out == [f"revgw {__version__} ({build})"]


async def test_help_spot_checks() -> None:
    """A few entries a user looks for, spelled out."""
    gateway, client = await asyncio.gather(run("gateway", "--help"), run("client", "--help"))
    gateway_text = " ".join(" ".join(gateway.out).split())
    client_text = " ".join(" ".join(client.out).split())
    assert "--pool-wait SECONDS" in gateway_text
    assert "(env REVGW_POOL_WAIT; default: 10.0)" in gateway_text
    assert "--tunnel-listen HOST:PORT" in gateway_text
    assert "(env REVGW_TUNNEL_LISTEN; default: 0.0.0.0:9001)" in gateway_text
    assert "--default-tunnel NAME" in gateway_text
    assert "(env REVGW_DEFAULT_TUNNEL; default: default)" in gateway_text
    assert "--host HOSTNAME" in client_text
    assert "(env REVGW_HOST; default: none)" in client_text
    assert "--pool N" in client_text
    assert "(env REVGW_POOL; default: 8)" in client_text


# --- bad values -------------------------------------------------------------------------------

BAD: list[tuple[list[str], dict[str, str], str]] = [
    (["gateway", "--listen", "nonsense"], {}, "--listen: 'nonsense' is not host:port"),
    (["gateway", "--tunnel-listen", "127.0.0.1:70000"], {}, "out of range"),
    (["gateway", "--heartbeat", "-1"], {}, "--heartbeat must be greater than 0"),
    (["gateway", "--heartbeat", "inf"], {}, "--heartbeat must be at most"),
    (["gateway", "--pool-wait", "soon"], {}, "--pool-wait: 'soon' is not a valid float"),
    (["client", "--token", "t", "--pool", "0"], {}, "--pool must be 1 or more"),
    (["client", "--token", "t", "--bogus"], {}, "unrecognized arguments: --bogus"),
    (["client", "--token", "t"], {"REVGW_POOL": "abc"}, "--pool: 'abc' is not a valid int"),
    (["client", "--token", "t", "--gateway", "gw:port"], {}, "--gateway"),
    (["client"], {}, "--token is required"),
    (["client", "--token", "t", "--host", "Not_A_Host"], {}, "host 'not_a_host'"),
    (["server", "--listen", "127.0.0.1"], {}, "--listen"),
    (["server"], {"REVGW_LOG_LEVEL": "loud"}, "REVGW_LOG_LEVEL"),
    (["producer", "--url", "ftp://example.com/"], {}, "--url"),
    (["producer", "--count", "0"], {}, "--count must be 1 or more"),
    (["demo", "--listen", "nonsense"], {}, "--listen: 'nonsense' is not host:port"),
    (["demo", "--server-listen", "127.0.0.1:99999"], {}, "--server-listen"),
    (["demo", "--interval", "-1"], {}, "--interval must be 0 or more"),
    ([], {}, "ROLE"),
]


@pytest.mark.parametrize(
    ("args", "env", "says"),
    BAD,
    ids=[" ".join(a + [f"{k}={v}" for k, v in e.items()]) for a, e, _ in BAD],
)
async def test_bad_value_exits_2_with_one_line(
    args: list[str], env: dict[str, str], says: str
) -> None:
    """A bad flag or value: exit code 2, one line on stderr naming it, no traceback."""
    proc = await run(*args, env=clean_env(**env))
    assert proc.process.returncode == 2, proc
    assert len(proc.err) == 1, proc
    assert "Traceback" not in proc.err[0]
    assert "error:" in proc.err[0]
    assert says in proc.err[0]
    assert proc.out == []


@pytest.mark.parametrize("role", ["gateway", "server", "demo"])
async def test_port_in_use_exits_1_with_one_error_line(role: str) -> None:
    """A public port someone else holds: exit 1, one ``error:`` line saying so, no traceback."""
    others = {
        "gateway": ["--tunnel-listen", "127.0.0.1:0", "--token", TOKEN],
        "server": [],
        "demo": ["--tunnel-listen", "127.0.0.1:0", "--server-listen", "127.0.0.1:0"],
    }[role]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await run(role, "--listen", f"127.0.0.1:{port}", *others)
    assert proc.process.returncode == 1, proc
    assert not any("Traceback" in line for line in proc.err), proc
    errors = [line for line in proc.err if "error:" in line]
    assert len(errors) == 1, proc
    assert errors[0].startswith(f"revgw {role}: error: ")
    assert "in use" in errors[0]
    assert proc.out == []


# --- the environment --------------------------------------------------------------------------


async def test_env_variable_sets_the_listen_address_and_a_flag_wins_over_it() -> None:
    """REVGW_LISTEN takes effect; with --listen given too, the flag wins."""
    env_port, ignored_port = free_port(), free_port()
    async with (
        revgw("server", env=clean_env(REVGW_LISTEN=f"127.0.0.1:{env_port}")) as by_env,
        revgw(
            "server",
            "--listen",
            "127.0.0.1:0",
            env=clean_env(REVGW_LISTEN=f"127.0.0.1:{ignored_port}"),
        ) as by_flag,
    ):
        await by_env.line(rf"server is listening on 127\.0\.0\.1:{env_port}$")
        flag_address = (await by_flag.line(r"server is listening on (\S+)$"))[1]
        assert flag_address != f"127.0.0.1:{ignored_port}"
        assert (await get(f"127.0.0.1:{env_port}", "/ping")).body == b"pong"
        assert (await get(flag_address, "/ping")).body == b"pong"
        with pytest.raises(OSError):
            await get(f"127.0.0.1:{ignored_port}", "/ping")
        assert (await by_env.stop(signal.SIGTERM))[0] == 0
        assert (await by_flag.stop(signal.SIGTERM))[0] == 0


async def test_client_takes_every_setting_from_the_environment(
    make_gateway: GatewayFactory, server: Server
) -> None:
    """A client configured only by REVGW_* variables joins with that pool, id and hosts."""
    env = clean_env(
        REVGW_GATEWAY="",  # replaced below
        REVGW_TARGET=server.address,
        REVGW_TOKEN=TOKEN,
        REVGW_POOL="3",
        REVGW_CLIENT_ID="env-client",
        REVGW_HOST="a.example, b.example",
    )
    async with make_gateway() as gw:
        env["REVGW_GATEWAY"] = gw.tunnel_address
        async with revgw("client", env=env) as client:
            await client.line(r"connected to gateway")
            tunnel = gw.registry.tunnels["default"]
            assert tunnel.clients == {"env-client": 3}
            assert tunnel.hosts == {"a.example", "b.example"}
            response = await get(gw.address, "/ping", host="b.example")
            assert (response.status, response.body) == (200, b"pong")
            assert (await client.stop(signal.SIGINT))[0] == 0


async def test_pool_flag_wins_over_the_environment(
    make_gateway: GatewayFactory, server: Server
) -> None:
    """REVGW_POOL=5 with --pool 2: the client keeps 2 connections."""
    async with make_gateway() as gw:
        env = clean_env(REVGW_POOL="5", REVGW_TOKEN=TOKEN, REVGW_CLIENT_ID="flagged")
        async with revgw(
            "client",
            "--gateway",
            gw.tunnel_address,
            "--target",
            server.address,
            "--pool",
            "2",
            env=env,
        ) as client:
            await client.line(r"connected to gateway")
            assert gw.registry.tunnels["default"].clients == {"flagged": 2}
            assert (await client.stop(signal.SIGTERM))[0] == 0


# --- a gateway without a token ----------------------------------------------------------------


async def test_gateway_without_token_prints_one_and_requires_it(server: Server) -> None:
    """The generated token is printed once with the client command, which then works as is."""
    async with revgw("gateway", "--listen", "127.0.0.1:0", "--tunnel-listen", "127.0.0.1:0") as gw:
        listening = await gw.line(r"callers on (\S+), tunnel clients on (\S+)$")
        public, tunnel = listening[1], listening[2]
        command = (await gw.line(r"^\s*(revgw client --gateway \S+ --token \S+)$", stream="out"))[1]
        argv = shlex.split(command)
        assert argv[:3] == ["revgw", "client", "--gateway"]
        assert argv[3] == tunnel  # the real port, usable as printed
        token = argv[5]
        assert len(token) >= 16

        async with (
            revgw(*argv[1:], "--target", server.address, "--pool", "2") as good,
            revgw(*argv[1:4], "--token", token + "x", "--target", server.address) as bad,
        ):
            await good.line(r"connected to gateway")
            await gw.line(r"joined tunnel 'default'")
            response = await get(public, "/ping")
            assert (response.status, response.body) == (200, b"pong")
            assert await bad.finish() == 1
            assert bad.err == ["revgw client: the gateway denied this client: unknown token"]
            assert (await good.stop(signal.SIGTERM))[0] == 0
        assert (await gw.stop(signal.SIGTERM))[0] == 0
    output = "\n".join(gw.out + gw.err)
    assert output.count(token) == 1


# --- signals ------------------------------------------------------------------------------------


@asynccontextmanager
async def started(
    role: str, env: dict[str, str], gw: Gateway, server: Server
) -> AsyncIterator[Proc]:
    """``role`` running on fresh ports and ready to serve."""
    if role == "gateway":
        args = ["--listen", "127.0.0.1:0", "--tunnel-listen", "127.0.0.1:0", "--token", TOKEN]
        ready = r"gateway listening"
    elif role == "client":
        args = ["--gateway", gw.tunnel_address, "--target", server.address, "--token", TOKEN]
        args += ["--pool", "2"]
        ready = r"connected to gateway"
    elif role == "server":
        args, ready = ["--listen", "127.0.0.1:0"], r"server is listening"
    elif role == "producer":
        args, ready = ["--url", f"http://{gw.address}/ping", "--interval", "0.2"], r"^pong$"
    else:
        args = ["--listen", "127.0.0.1:0", "--tunnel-listen", "127.0.0.1:0"]
        args += ["--server-listen", "127.0.0.1:0", "--interval", "0.2"]
        ready = r"producer +pong$"
    async with revgw(role, *args, env=env) as proc:
        await proc.line(ready, stream="out" if role == "producer" else "err")
        yield proc


@pytest.mark.parametrize("role", list(ROLES))
async def test_sigint_and_sigterm_stop_each_role_cleanly(
    role: str, make_gateway: GatewayFactory, make_client: ClientFactory, server: Server
) -> None:
    """SIGINT or SIGTERM: the role exits 0 within 2 s (on uvloop and on plain asyncio)."""
    async with make_gateway() as gw, make_client(gw):
        runs = [
            (signal.SIGINT, clean_env()),
            (signal.SIGTERM, clean_env()),
            (signal.SIGTERM, clean_env(REVGW_LOOP="asyncio")),
        ]

        async def one(signum: int, env: dict[str, str]) -> tuple[int, float, Proc]:
            async with started(role, env, gw, server) as proc:
                if role == "demo":
                    public = (await proc.line(r"open http://localhost:(\d+)/ping"))[1]
                    response = await get(f"127.0.0.1:{public}", "/ping")
                    assert (response.status, response.body) == (200, b"pong")
                code, elapsed = await proc.stop(signum)
                return code, elapsed, proc

        results = await asyncio.gather(*(one(signum, env) for signum, env in runs))
    for (signum, env), (code, elapsed, proc) in zip(runs, results, strict=True):
        assert code == 0, (signum, env.get("REVGW_LOOP"), proc)
        assert elapsed < 2, (signum, elapsed, proc)
        assert not any("Traceback" in line for line in proc.err), proc
        assert any(f"{signal.Signals(signum).name} received; stopping" in line for line in proc.err)


# --- producer -------------------------------------------------------------------------------------


async def test_producer_count_prints_one_pong_per_request_and_exits_0(chain: Gateway) -> None:
    """``revgw producer --count 3`` through a running chain: three ``pong`` lines, exit 0."""
    proc = await run(
        "producer", "--url", f"http://{chain.address}/ping", "--count", "3", "--interval", "0"
    )
    assert proc.process.returncode == 0, proc
    assert proc.out == ["pong"] * 3


async def test_producer_against_a_closed_port_prints_errors_and_exits_1() -> None:
    """Nothing listening: one ``error:`` line per request, exit 1."""
    url = f"http://127.0.0.1:{free_port()}/ping"
    proc = await run("producer", "--url", url, "--count", "2", "--interval", "0", "--timeout", "2")
    assert proc.process.returncode == 1, proc
    assert len(proc.out) == 2
    assert all(line.startswith("error: connection refused") for line in proc.out), proc
    assert not any("Traceback" in line for line in proc.err)


async def test_demo_with_count_runs_the_whole_chain_and_exits_0() -> None:
    """``revgw demo --count 2``: two clients join, the producer logs two pongs, exit 0."""
    proc = await run(
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--tunnel-listen",
        "127.0.0.1:0",
        "--server-listen",
        "127.0.0.1:0",
        "--interval",
        "0",
        "--count",
        "2",
    )
    assert proc.process.returncode == 0, proc
    assert len([line for line in proc.err if re.search(r"producer +pong$", line)]) == 2
    for number in (1, 2):
        assert any(f"client demo-client-{number} joined tunnel 'default'" in x for x in proc.err)
    assert not any("Traceback" in line for line in proc.err)


# --- logs ---------------------------------------------------------------------------------------


async def test_logs_name_the_role_the_tunnel_and_the_connection(server: Server) -> None:
    """One readable line per event: role, then ``[tunnel#n]``, then what happened."""
    async with revgw(
        "gateway", "--listen", "127.0.0.1:0", "--tunnel-listen", "127.0.0.1:0", "--token", TOKEN
    ) as gw:
        listening = await gw.line(
            rf"{TIME} gateway +gateway listening: callers on (\S+), tunnel clients on (\S+)$"
        )
        public, tunnel = listening[1], listening[2]
        async with revgw(
            "client",
            "--gateway",
            tunnel,
            "--target",
            server.address,
            "--token",
            TOKEN,
            "--client-id",
            "log-client",
            "--pool",
            "2",
        ) as client:
            await client.line(
                rf"{TIME} client +connected to gateway \S+: tunnel 'default', \d+ idle"
            )
            await gw.line(
                rf"{TIME} gateway +\[default#\d+\] client log-client joined tunnel "
                r"'default' from 127\.0\.0\.1:\d+ \(no hosts\)$"
            )
            assert (await get(public, "/ping")).body == b"pong"
            await client.line(
                rf"{TIME} client +\[default#\d+\] paired: caller 127\.0\.0\.1:\d+ -> "
                rf"{re.escape(server.address)}$"
            )
            await gw.line(
                rf'{TIME} access +\[default#\d+\] 127\.0\.0\.1:\d+ "GET /ping HTTP/1\.1" 200 '
            )
            assert (await client.stop(signal.SIGTERM))[0] == 0
        await gw.line(r"gateway +\[default#\d+\] client log-client left tunnel 'default'$")
        assert (await gw.stop(signal.SIGTERM))[0] == 0
