"""One benchmark run: the private server, the rounds (direct, then tunnel), the idle pools.

Every round measures the direct path to the private server and then the tunnel to
the same server, with the same load, so that the tunnel's figures can be read as
ratios of what this machine does without it. The tunnel side of each round gets a
fresh gateway and client (``--pool 8``): the burst starts with exactly 8 idle
pooled connections, and the peak RSS of a round is that of one pair of processes.
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from . import env, load, procs
from .procs import BenchError, Proc, Tunnel

MIB = 1 << 20


@dataclass
class Config:
    smoke: bool
    rounds: int
    duration: float  # seconds per wrk run
    out: Path
    loop: str  # REVGW_LOOP for the revgw processes: auto (uvloop) or asyncio
    server: str  # auto, nginx or revgw
    load: str  # auto, wrk or python
    install: bool  # may run apt-get for missing nginx/wrk
    only: str | None = None  # "idle": the idle pools alone, no request rounds
    keepalive_connections: int = 64
    fresh_connections: int = 16
    burst: int = 1000
    burst_pool: int = 8
    blob_bytes: int = 64 * MIB
    downloads: int = 3  # per side per round
    idle_pools: tuple[int, ...] = (1000, 10_000)
    idle_hold: float = 12.0  # seconds a full idle pool is watched (over two heartbeats)
    idle_fill_timeout: float = 300.0
    pause: float = 0.5  # between phases, so that closing connections settle

    @classmethod
    def smoke_defaults(cls, **given: Any) -> Config:
        return cls(
            smoke=True,
            **given,
            burst=50,
            blob_bytes=4 * MIB,
            downloads=1,
            idle_pools=(50,),
            idle_hold=1.0,
            idle_fill_timeout=30.0,
            pause=0.1,
        )


class Runner:
    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.notes: list[str] = []  # said in the report: fallbacks, installs, limits
        self.errors: list[str] = []  # phases that could not be measured
        self.token = secrets.token_hex(16)
        self.env = {**os.environ, "REVGW_LOOP": config.loop}
        if os.environ.get("PYTHONPATH"):
            # revgw runs in the work folder: make bench's relative build/compiled
            # must name the same folder there.
            paths = os.environ["PYTHONPATH"].split(os.pathsep)
            self.env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in paths if p)
        self.server_port = 0
        self.server_kind = ""  # "nginx" or "revgw server"
        self.blob_path = "/blob"
        self.wrk: str | None = None

    def say(self, text: str) -> None:
        self.notes.append(text)

    # -- set-up --------------------------------------------------------------------------

    def build(self) -> str:
        """What the revgw processes run, in their words (compiled or plain Python)."""
        argv = procs.revgw_argv("--version")
        done = subprocess.run(
            argv, env=self.env, cwd=self.workdir, capture_output=True, text=True, check=False
        )
        return done.stdout.strip().removeprefix("revgw ") or f"unknown: {done.stderr.strip()}"

    def tools(self) -> tuple[str | None, str | None]:
        """nginx and wrk: found, installed (full runs only) or None."""
        config = self.config
        installer = env.Installer(self.notes) if config.install and not config.smoke else None
        nginx = wrk = None
        if config.server == "revgw":
            self.say("the private server is `revgw server` (--server revgw)")
        else:
            nginx = env.find_tool("nginx", ["nginx-light", "nginx"], installer)
            if not nginx:
                self.say("nginx is not available: the private server is `revgw server` instead")
        if config.load == "python":
            self.say("request rates come from a small asyncio loop (--load python)")
        else:
            wrk = env.find_tool("wrk", ["wrk"], installer)
            if not wrk:
                self.say("wrk is not available: request rates come from a small asyncio loop")
        return nginx, wrk

    def start_server(self, nginx: str | None) -> Proc:
        if nginx:
            try:
                proc, self.server_port = procs.start_nginx(
                    nginx, self.workdir, self.config.blob_bytes
                )
                self.server_kind = "nginx"
                return proc
            except (BenchError, OSError) as exc:
                self.say(f"nginx did not start ({exc}): the private server is `revgw server`")
        proc, self.server_port = procs.start_demo_server(self.workdir, self.env)
        self.server_kind = "revgw server"
        self.blob_path = f"/bytes/{self.config.blob_bytes}"
        return proc

    def tunnel(self, pool: int, tag: str, fill_timeout: float = 30.0) -> ContextManager[Tunnel]:
        """A fresh gateway + client pair in front of the private server."""
        return procs.tunnel(
            workdir=self.workdir,
            env=self.env,
            token=self.token,
            target_port=self.server_port,
            pool=pool,
            fill_timeout=fill_timeout,
            tag=tag,
        )

    # -- measuring -----------------------------------------------------------------------

    def phase(self, where: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one measurement; a failure is recorded (and reported), not raised."""
        try:
            return fn()
        except (BenchError, OSError, subprocess.SubprocessError, ValueError) as exc:
            message = f"{where}: {type(exc).__name__}: {exc}"
            self.errors.append(message)
            return {"error": message}
        finally:
            time.sleep(self.config.pause)

    def _load(self, port: int, fresh: bool, tunnel: Tunnel | None) -> dict[str, Any]:
        config = self.config
        connections = config.fresh_connections if fresh else config.keepalive_connections
        before = tunnel.cpu_seconds() if tunnel else {}
        if self.wrk:
            result = load.run_wrk(self.wrk, port, connections, config.duration, fresh)
        else:
            result = load.run_python_load(port, connections, config.duration, fresh)
        record = result.as_dict()
        if tunnel:
            tunnel.check_alive()
            after = tunnel.cpu_seconds()
            cpu = {name: after[name] - before[name] for name in after}
            record["cpu_s"] = cpu
            record["cpu_s_per_10k"] = {
                name: seconds / result.requests * 10_000 if result.requests else None
                for name, seconds in cpu.items()
            }
        return record

    def _burst(self, port: int, tunnel: Tunnel | None) -> dict[str, Any]:
        record = load.run_burst(port, self.config.burst).as_dict()
        if tunnel:
            tunnel.check_alive()
        return record

    def _download(self, port: int, tunnel: Tunnel | None) -> dict[str, Any]:
        speeds = [
            load.download(port, self.blob_path, self.config.blob_bytes)
            for _ in range(self.config.downloads)
        ]
        if tunnel:
            tunnel.check_alive()
        return {"mb_s": speeds, "median_mb_s": statistics.median(speeds)}

    def side(self, name: str, port: int, tunnel: Tunnel | None) -> dict[str, Any]:
        """The four request phases against ``port``; for the tunnel, its processes' peaks too."""
        record: dict[str, Any] = {}
        peaks: dict[str, dict[str, int]] = {}
        phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("burst", lambda: self._burst(port, tunnel)),
            ("keepalive", lambda: self._load(port, False, tunnel)),
            ("fresh", lambda: self._load(port, True, tunnel)),
            ("download", lambda: self._download(port, tunnel)),
        ]
        for phase, fn in phases:
            record[phase] = self.phase(f"{name} {phase}", fn)
            if tunnel and tunnel.gateway.alive() and tunnel.client.alive():
                peaks[phase] = tunnel.rss_kib("VmHWM")  # VmHWM: the peak so far
        if tunnel:
            record["peak_rss_kib_by_phase"] = peaks
            # VmHWM only grows: the last phase's reading is the round's peak.
            record["peak_rss_kib"] = list(peaks.values())[-1] if peaks else None
            record["fill_s"] = tunnel.fill_seconds
            record["log"] = tunnel.gateway.log_lines()[-20:] + tunnel.client.log_lines()[-20:]
        return record

    def round(self, number: int) -> dict[str, Any]:
        config = self.config
        record: dict[str, Any] = {"round": number}
        record["direct"] = self.side(f"round {number} direct", self.server_port, None)
        try:
            with self.tunnel(config.burst_pool, tag=f"-r{number}") as tunnel:
                record["tunnel"] = self.side(f"round {number} tunnel", tunnel.port, tunnel)
        except (BenchError, OSError) as exc:
            message = f"round {number} tunnel: {type(exc).__name__}: {exc}"
            self.errors.append(message)
            record["tunnel"] = {"error": message}
        return record

    def idle_pools(self) -> dict[str, Any]:
        """RSS growth per idle pooled connection: pool N against pool 1, fresh processes each."""
        config = self.config
        record: dict[str, Any] = {}
        try:
            with self.tunnel(1, tag="-idle1") as base_pair:
                time.sleep(1.0)
                base = base_pair.rss_kib()
        except (BenchError, OSError) as exc:
            message = f"idle pool baseline: {type(exc).__name__}: {exc}"
            self.errors.append(message)
            return {"error": message}
        record["baseline_pool_1_rss_kib"] = base
        for size in config.idle_pools:
            record[str(size)] = self.phase(f"idle pool {size}", partial(self._idle, size, base))
        return record

    def _idle(self, size: int, base: dict[str, int]) -> dict[str, Any]:
        config = self.config
        with self.tunnel(size, tag=f"-idle{size}", fill_timeout=config.idle_fill_timeout) as pair:
            filled_rss = pair.rss_kib()
            counts: list[int] = []
            live: list[int] = []  # authenticated, as the gateway counts them
            end = time.monotonic() + config.idle_hold
            while True:
                pair.check_alive()
                counts.append(procs.established(pair.tunnel_port))
                live.append(pair.pool_live())
                if time.monotonic() >= end:
                    break
                time.sleep(min(1.0, config.idle_hold))
            rss = pair.rss_kib()
            log = pair.gateway.log_lines() + pair.client.log_lines()
        grown = {name: rss[name] - base[name] for name in rss}
        total = sum(grown.values())
        return {
            "pool": size,
            "fill_s": pair.fill_seconds,
            "rss_kib_when_filled": filled_rss,
            "rss_kib": rss,
            "growth_kib": grown,
            "kib_per_connection": {
                **{name: kib / (size - 1) for name, kib in grown.items()},
                "total": total / (size - 1),
            },
            "hold_s": config.idle_hold,
            "established_min": min(counts),
            "established_max": max(counts),
            "live_min": min(live),
            "live_max": max(live),
            "held": min(counts) >= size and min(live) >= size,
            "log_lines": len(log),
            "log": log[-20:],
        }


def run(config: Config) -> dict[str, Any]:
    """Measure everything; the result is what latest.json holds (report.py renders it)."""
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    drops_before = env.conntrack_drops()
    fd_limit = procs.raise_fd_limit()
    idle_only = config.only == "idle"
    with tempfile.TemporaryDirectory(prefix="revgw-bench-") as tmp:
        runner = Runner(config, Path(tmp))
        build = runner.build()
        nginx = None
        if idle_only:
            # An idle pool never dials its target: the demo server is enough, no tools needed.
            runner.say("--only idle: the idle pools alone, no request rounds")
        else:
            nginx, runner.wrk = runner.tools()
        if fd_limit < max(config.idle_pools) + 1000:  # per process: gateway and client
            runner.say(f"the open-file limit is {fd_limit}: the largest idle pool may not fit")
        server = runner.start_server(nginx)
        try:
            rounds = [] if idle_only else [runner.round(n) for n in range(1, config.rounds + 1)]
            idle = runner.idle_pools()
            server.check_alive()
        finally:
            server.stop()
    drops_after = env.conntrack_drops()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "smoke" if config.smoke else "full",
        "machine": {
            **env.machine(config.loop),
            "revgw_build": build,
            "load_average_1min_at_start": load_before,
            # None: no connection tracking in the kernel (see env.conntrack_drops)
            "conntrack_drops": (
                None if drops_before is None or drops_after is None else drops_after - drops_before
            ),
        },
        "setup": {
            "server": server_description(runner.server_kind, nginx),
            "load": (
                "none (idle pools only)"
                if idle_only
                else wrk_version(runner.wrk)
                if runner.wrk
                else "a Python asyncio loop (not wrk)"
            ),
            "load_tool": "wrk" if runner.wrk else "python",
            "server_kind": runner.server_kind,
            "rounds": len(rounds),
            "only": config.only,
            "duration_s": config.duration,
            "keepalive_connections": config.keepalive_connections,
            "fresh_connections": config.fresh_connections,
            "burst": config.burst,
            "burst_pool": config.burst_pool,
            "download_bytes": config.blob_bytes,
            "downloads_per_round": config.downloads,
            "idle_pools": list(config.idle_pools),
            "idle_hold_s": config.idle_hold,
            "fd_limit": fd_limit,
        },
        "notes": runner.notes,
        "errors": runner.errors,
        "rounds": rounds,
        "idle_pool": idle,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def server_description(kind: str, nginx: str | None) -> str:
    if kind == "nginx" and nginx:
        return env.tool_version([nginx, "-v"]).removeprefix("nginx version: ")
    return "revgw server (the demo server, instead of nginx)"


def wrk_version(wrk: str) -> str:
    """``wrk 4.1.0`` from wrk's banner (``wrk debian/4.1.0-3+b2 [epoll] Copyright ...``)."""
    words = env.tool_version([wrk, "--version"]).split()
    return " ".join(words[:2]) if words else "wrk"
