"""The compose demo for real: build, up, pong, isolation, a client lost, down.

Drives docker-compose.yml through Compose (`docker compose`, else `docker-compose`)
and looks at the result through the `docker` SDK, as a user of `make` would see it.
Skipped, with the reason, where no Docker engine or no Compose answers:
cmd/prepare-docker.sh sets both up on Debian, and CI (.ci/run) runs it first.

- The project is called revgwtest<pid>, so it never touches a developer's `make`.
- The gateway's :9000 is published on $REVGW_PUBLIC_PORT, else on a free port, so
  that a `make local` already on 9000 does not get in the way.
- The base image is $REVGW_BASE_IMAGE; unset, the one cmd/prepare-docker.sh builds
  where it exists (no registry here), else the compose file's python:3.11-slim.
- Compose is $REVGW_COMPOSE if set, else `docker compose`, else `docker-compose`.
- The images build once (about 15 s here, mostly pip), then come from the build
  cache; the whole module takes about 25 s.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from helpers import free_port

docker = pytest.importorskip("docker")

ROOT = Path(__file__).resolve().parents[1]
LOCAL_BASE_IMAGE = "revgw-base:bookworm"  # what cmd/prepare-docker.sh builds
DEFAULT_BASE_IMAGE = "python:3.11-slim"  # docker-compose.yml's default
PREPARE = "run cmd/prepare-docker.sh as root to set it up"

# Setup builds and starts the project (its time counts against the first test).
pytestmark = pytest.mark.timeout(600)

T = TypeVar("T")


PING = "import docker; docker.from_env(timeout=10).ping()"


def engine() -> Any:
    """A client of the engine; skip the tests if none answers.

    The first try runs in a child process: where the SDK cannot connect, it leaves a
    socket unclosed, and here that ResourceWarning would be an error at exit.
    """
    ping = subprocess.run([sys.executable, "-c", PING], capture_output=True, text=True, timeout=60)
    if ping.returncode != 0:
        reason = (ping.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"no Docker engine answers ({reason}); {PREPARE}")
    return docker.from_env()


def compose_command() -> list[str]:
    """$REVGW_COMPOSE if set (say, a Compose v2 binary to try), else `docker compose`
    (v2, or cmd/prepare-docker.sh's shim for v1) where it answers, else `docker-compose`."""
    chosen = os.environ.get("REVGW_COMPOSE")
    candidates = [shlex.split(chosen)] if chosen else [["docker", "compose"], ["docker-compose"]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run(
            [*command, "version"], capture_output=True, stdin=subprocess.DEVNULL, timeout=30
        )
        if probe.returncode == 0:
            return command
    pytest.skip(f"no Compose answers ({' or '.join(map(' '.join, candidates))}); {PREPARE}")


def until(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll `check` until it returns something, for at most `timeout` seconds.

    Containers give no readiness signal the host can wait on, so the tests observe
    them from outside: a bounded loop, never a bare sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(0.5)


def get_ping(port: int) -> tuple[int, bytes] | None:
    """GET /ping on the published port: (status, body), or None if no answer came."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/ping")
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def pong(port: int) -> bool | None:
    return True if get_ping(port) == (200, b"pong") else None


def has_image(client: Any, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def base_image(client: Any, wanted: str | None) -> str:
    """The image to build from: present here, or pulled now; else skip the tests."""
    if not wanted:
        wanted = LOCAL_BASE_IMAGE if has_image(client, LOCAL_BASE_IMAGE) else DEFAULT_BASE_IMAGE
    if not has_image(client, wanted):
        try:
            client.images.pull(wanted)
        except docker.errors.APIError as exc:
            pytest.skip(f"base image {wanted} is not here and cannot be pulled ({exc}); {PREPARE}")
    return wanted


@dataclass
class Project:
    name: str
    port: int
    command: list[str]
    env: dict[str, str]
    docker: Any

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.command, "-p", self.name, "-f", str(ROOT / "docker-compose.yml"), *args],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-3000:]
            pytest.fail(f"compose {' '.join(args)} exited {result.returncode}:\n{output}")
        return result

    def label(self, service: str | None = None) -> dict[str, list[str]]:
        labels = [f"com.docker.compose.project={self.name}"]
        if service is not None:
            labels.append(f"com.docker.compose.service={service}")
        return {"label": labels}

    def containers(self, service: str) -> list[Any]:
        return sorted(
            self.docker.containers.list(filters=self.label(service)), key=lambda c: c.name
        )

    def container(self, service: str) -> Any:
        (only,) = self.containers(service)
        return only

    def address(self, service: str, network: str) -> str:
        """A container's IP address on one of the project's networks."""
        networks = self.container(service).attrs["NetworkSettings"]["Networks"]
        ip: str = networks[f"{self.name}_{network}"]["IPAddress"]
        return ip

    def leftovers(self) -> list[str]:
        """Everything of this project the engine still has: containers, networks, volumes."""
        by_label = self.label()
        containers = self.docker.containers.list(all=True, filters=by_label)
        networks = {n.name for n in self.docker.networks.list(filters=by_label)}
        networks |= {
            n.name for n in self.docker.networks.list() if n.name.startswith(f"{self.name}_")
        }
        volumes = self.docker.volumes.list(filters=by_label)
        return (
            [f"container {c.name}" for c in containers]
            + [f"network {name}" for name in sorted(networks)]
            + [f"volume {v.name}" for v in volumes]
        )


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    client = engine()
    try:
        command = compose_command()
        env = dict(os.environ)
        env["REVGW_BASE_IMAGE"] = base_image(client, env.get("REVGW_BASE_IMAGE"))
        port = int(env.get("REVGW_PUBLIC_PORT") or free_port())
        env["REVGW_PUBLIC_PORT"] = str(port)
        proj = Project(f"revgwtest{os.getpid()}", port, command, env, client)
        try:
            proj.compose("build", timeout=500)
            # `up -d` returns once every container is started, the producer last: it
            # waits (depends_on) for the gateway's chain-ready healthcheck.
            proj.compose("up", "-d", timeout=240)
            yield proj
        finally:
            proj.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=120)
    finally:
        client.close()


def test_pong_through_the_published_port(project: Project) -> None:
    until(f"pong on 127.0.0.1:{project.port}", lambda: pong(project.port), timeout=30)
    assert get_ping(project.port) == (200, b"pong")


def test_the_producer_logs_pong(project: Project) -> None:
    producer = project.container("producer")

    def pongs() -> list[str] | None:
        lines = producer.logs().decode().splitlines()
        found = [line for line in lines if line == "pong"]  # one line per request
        return found if len(found) >= 3 else None

    until("three pong lines in the producer's log", pongs, timeout=30)
    assert "error" not in producer.logs().decode()


PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 3).close()
except OSError as exc:
    print(f"failed: {type(exc).__name__}: {exc}")
else:
    print("connected")
"""


def probe(container: Any, host: str, port: int) -> str:
    """From inside `container`: does a TCP connection to host:port open?"""
    result = container.exec_run(["python3", "-c", PROBE, host, str(port)])
    assert result.exit_code == 0, result.output
    return str(result.output.decode().strip())


def test_the_producer_cannot_reach_the_server(project: Project) -> None:
    server_ip = project.address("server", "client-server")
    producer = project.container("producer")
    client = project.containers("client")[0]
    # The probe works: the producer reaches its gateway, a client reaches the server
    # by name and at the address the producer is about to try.
    assert probe(producer, "gateway", 9000) == "connected"
    assert probe(client, "server", 8080) == "connected"
    assert probe(client, server_ip, 8080) == "connected"
    # The producer can neither resolve the server's name (no shared network, so
    # Docker's DNS does not know it) nor open a connection to its address (the
    # bridges are isolated from each other): only the tunnel leads there.
    by_name = probe(producer, "server", 8080)
    assert by_name.startswith("failed: gaierror"), by_name
    by_address = probe(producer, server_ip, 8080)
    assert by_address.startswith("failed:"), by_address


def test_one_client_killed_the_other_keeps_serving(project: Project) -> None:
    gateway = project.container("gateway")
    joined = re.compile(r"client (\S+) joined tunnel 'default'")

    def both_joined() -> set[str] | None:
        ids = set(joined.findall(gateway.logs().decode()))
        return ids if len(ids) >= 2 else None

    until("both clients joined at the gateway", both_joined, timeout=30)
    clients = project.containers("client")
    assert len(clients) == 2, [c.name for c in clients]
    killed, survivor = clients

    killed.kill()
    killed.reload()
    assert killed.status != "running"
    answers = [get_ping(project.port) for _ in range(10)]
    assert answers == [(200, b"pong")] * 10
    survivor.reload()
    assert survivor.status == "running"


def test_down_leaves_nothing_behind(project: Project) -> None:
    assert project.leftovers(), "the project should be up before down"
    project.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=120)
    assert project.leftovers() == []
    assert get_ping(project.port) is None
