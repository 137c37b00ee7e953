"""The processes a run needs (nginx, revgw roles) and what /proc says about them.

Every process gets its own free loopback ports and a log file in the run's
temporary directory, and is stopped with SIGTERM (SIGKILL after 5 s). Nothing
is daemonised, so nothing outlives the run.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from pathlib import Path

from revgw import GatewaySettings

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_TEMPLATE = Path(__file__).with_name("nginx.conf")


class BenchError(Exception):
    """Something the benchmark needs did not happen (a process died, a wait timed out)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.05) -> float:
    """Poll ``check`` until it is true; return the seconds it took, or raise after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - start


def _tcp_sockets(port: int, state: str) -> int:
    """Sockets whose *local* port is ``port`` in TCP ``state`` (01 established, 0A listen).

    Counted once per (local, remote) address pair: a table that changes while it
    is read (20 000 lines take many reads) can show a line twice.
    """
    wanted = f":{port:04X}"
    seen: set[tuple[str, str]] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(FileNotFoundError), open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                fields = line.split(None, 4)
                if fields[1].endswith(wanted) and fields[3] == state:
                    seen.add((fields[1], fields[2]))
    return len(seen)


def established(port: int) -> int:
    """Established connections accepted on ``port`` (the gateway's side of a tunnel pool)."""
    return _tcp_sockets(port, "01")


def listening(port: int) -> bool:
    return _tcp_sockets(port, "0A") > 0


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One ``GET`` with ``Connection: close``; (status, body), or (0, b"") if it failed."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return 0, b""
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        return 0, b""


@dataclass
class Proc:
    """A started process, with readers for the /proc figures the benchmark reports."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with {self.popen.returncode}: {self.log_tail() or 'no output'}"
            )

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (fields 14 and 15 of /proc/PID/stat)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kib(self, key: str) -> int:
        """A ``kB`` line of /proc/PID/status: VmRSS (now) or VmHWM (peak resident set)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise BenchError(f"no {key} in /proc/{self.pid}/status")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def log_lines(self) -> list[str]:
        """What the process logged (revgw runs with --log-level warning: only trouble)."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(
    name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None, tag: str = ""
) -> Proc:
    log = workdir / f"{name}{tag}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    return Proc(name, popen, log)


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's RLIMIT_NOFILE (children inherit it); return the new soft limit.

    The 10 000-connection idle pool needs 10 000+ descriptors in each of the gateway
    and the client. Root may also raise the hard limit; anyone else gets the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    else:
        try:  # raising the hard limit needs CAP_SYS_RESOURCE (root)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the private server ---------------------------------------------------------------


def make_blob(path: Path, size: int) -> None:
    """A file of ``size`` random-looking bytes (1 MiB of randomness, repeated)."""
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as out:
        left = size
        while left > 0:
            out.write(chunk[:left])
            left -= len(chunk)


def start_nginx(nginx: str, workdir: Path, blob_size: int) -> tuple[Proc, int]:
    """nginx with the benchmark's own config, pid file and temp dirs under ``workdir``."""
    port = free_port()
    make_blob(workdir / "blob.bin", blob_size)
    config = NGINX_TEMPLATE.read_text().replace("@DIR@", str(workdir)).replace("@PORT@", str(port))
    (workdir / "nginx.conf").write_text(config)
    # nginx's worker drops to an unprivileged user when started as root: let it read the blob.
    workdir.chmod(0o755)
    (workdir / "blob.bin").chmod(0o644)
    argv = [nginx, "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf")]
    argv += ["-e", str(workdir / "nginx-error.log")]
    proc = start("nginx", argv, workdir)
    _wait_ping(proc, port, timeout=10)
    return proc, port


def start_demo_server(workdir: Path, env: dict[str, str]) -> tuple[Proc, int]:
    """The fallback private server: ``revgw server`` (it streams /bytes/N instead of /blob)."""
    port = free_port()
    argv = [*revgw_argv("server"), "--listen", f"{HOST}:{port}", "--log-level", "warning"]
    proc = start("server", argv, workdir, env)
    _wait_ping(proc, port, timeout=20)
    return proc, port


def _wait_ping(proc: Proc, port: int, timeout: float) -> None:
    def pong() -> bool:
        proc.check_alive()
        return http_get(port, "/ping", timeout=1) == (200, b"pong")

    wait_until(f"{proc.name} to answer GET /ping on port {port}", pong, timeout)


# -- revgw ------------------------------------------------------------------------------


def revgw_argv(role: str) -> list[str]:
    return [sys.executable, "-m", "revgw", role]


def _gateway_default(name: str) -> int:
    value = next(f.default for f in fields(GatewaySettings) if f.name == name)
    assert isinstance(value, int)
    return value


def pool_limits(pool: int) -> list[str]:
    """Gateway flags under which one client may hold ``pool`` pooled connections.

    The defaults (``--max-conns-per-client`` 1024, ``--max-conns-per-tunnel`` 4096)
    guard a public gateway against one greedy client; a user who wants a bigger
    pool raises them, and so does the benchmark. Never below the defaults: a
    client under load holds its busy connections on top of its idle ones.
    """
    per_client = max(pool, _gateway_default("max_conns_per_client"))
    per_tunnel = max(pool, _gateway_default("max_conns_per_tunnel"))
    return ["--max-conns-per-client", str(per_client), "--max-conns-per-tunnel", str(per_tunnel)]


def pool_live(admin_port: int) -> int:
    """Authenticated connections in the gateway's pools (its ``/api/tunnels``); -1 if unknown.

    Established TCP connections are not enough: a connection the gateway turned
    away with BUSY is established until it closes. Nor is ``idle``: one waiting
    for its PONG is not idle for that moment, yet still held.
    """
    status, body = http_get(admin_port, "/api/tunnels")
    if status != 200:
        return -1
    try:
        return sum(int(t["pool"]["live"]) for t in json.loads(body)["tunnels"])
    except (ValueError, KeyError, TypeError):
        return -1


@dataclass
class Tunnel:
    """A gateway and a client on fresh ports, the client's pool full."""

    gateway: Proc
    client: Proc
    port: int  # public: callers connect here
    tunnel_port: int
    admin_port: int  # the gateway's admin listener: /api/tunnels counts its pool
    fill_seconds: float  # from starting the client to its whole pool authenticated at the gateway

    @property
    def procs(self) -> tuple[Proc, Proc]:
        return self.gateway, self.client

    def check_alive(self) -> None:
        self.gateway.check_alive()
        self.client.check_alive()

    def rss_kib(self, key: str = "VmRSS") -> dict[str, int]:
        return {p.name: p.status_kib(key) for p in self.procs}

    def cpu_seconds(self) -> dict[str, float]:
        return {p.name: p.cpu_seconds() for p in self.procs}

    def pool_live(self) -> int:
        return pool_live(self.admin_port)


@contextmanager
def tunnel(
    *,
    workdir: Path,
    env: dict[str, str],
    token: str,
    target_port: int,
    pool: int,
    fill_timeout: float = 30.0,
    tag: str = "",
) -> Iterator[Tunnel]:
    """Start ``revgw gateway`` and ``revgw client --pool N``; stop both on exit.

    The gateway gets limits that fit the pool (``pool_limits``) and its admin
    listener on a free port (the default 9002 may be taken by another gateway).
    Yields once the gateway reports the whole pool authenticated.
    """
    port, tunnel_port, admin_port = free_port(), free_port(), free_port()
    procs: list[Proc] = []
    try:
        gateway = start(
            "gateway",
            [
                *revgw_argv("gateway"),
                *("--listen", f"{HOST}:{port}", "--tunnel-listen", f"{HOST}:{tunnel_port}"),
                *("--admin", f"{HOST}:{admin_port}"),
                *pool_limits(pool),
                *("--token", token, "--log-level", "warning"),
            ],
            workdir,
            env,
            tag,
        )
        procs.append(gateway)

        def gateway_up() -> bool:
            gateway.check_alive()
            return listening(port) and listening(tunnel_port)

        wait_until("the gateway to listen", gateway_up, timeout=20)
        client = start(
            "client",
            [
                *revgw_argv("client"),
                *("--gateway", f"{HOST}:{tunnel_port}", "--target", f"{HOST}:{target_port}"),
                *("--token", token, "--pool", str(pool), "--log-level", "warning"),
            ],
            workdir,
            env,
            tag,
        )
        procs.append(client)

        def pool_full() -> bool:
            gateway.check_alive()
            client.check_alive()
            # The cheap count first; the gateway is asked only once it can be true.
            return established(tunnel_port) >= pool and pool_live(admin_port) >= pool

        every = 0.02 if pool <= 100 else 0.25
        fill = wait_until(
            f"{pool} authenticated pooled connections", pool_full, fill_timeout, every
        )
        yield Tunnel(gateway, client, port, tunnel_port, admin_port, fill)
    finally:
        for proc in reversed(procs):
            proc.stop()
