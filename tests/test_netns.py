"""The network-namespace demo (examples/netns/netns.py): the compose topology, for real.

The end-to-end test needs root and ``ip netns``; elsewhere it is skipped with the
reason. It uses namespaces of its own (prefix ``rgt<pid>-``), so that it never
touches a demo someone is running, and removes them all, also when it fails.
The topology test needs nothing and runs everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "netns-test-token-0123456789"


def load_netns() -> ModuleType:
    """examples/netns/netns.py is a program, not part of the installed package: load it by path."""
    path = ROOT / "examples" / "netns" / "netns.py"
    spec = importlib.util.spec_from_file_location("revgw_netns_demo", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


netns = load_netns()


def test_topology_matches_docker_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    in_compose = {
        name: set(service.get("networks", [])) for name, service in compose["services"].items()
    }
    in_netns = {service: set(networks) for service, networks in netns.TOPOLOGY.items()}
    assert in_netns == in_compose
    assert set(netns.NETWORKS) == set(compose["networks"])
    # Every interface name fits Linux's 15 characters, and the addresses are distinct.
    for network in netns.NETWORKS:
        assert len(netns.bridge(network)) <= 15
    addresses = [
        netns.address(service, network)
        for service, networks in netns.TOPOLOGY.items()
        for network in networks
    ]
    assert len(set(addresses)) == len(addresses)


# --- end to end, in namespaces -----------------------------------------------------------


def ip_lines(*args: str) -> list[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def root_links() -> set[str]:
    """Interface names in this (root) namespace."""
    return {line.split(":")[1].strip().split("@")[0] for line in ip_lines("-o", "link", "show")}


def namespaces_with(prefix: str) -> list[str]:
    return [line.split()[0] for line in ip_lines("netns", "list") if line.startswith(prefix)]


@pytest.fixture(scope="module")
def can_make_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("no 'ip' command (Debian: apt-get install iproute2)")
    scratch = f"rgt{os.getpid()}-scratch"
    made = subprocess.run(["ip", "netns", "add", scratch], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"'ip netns add' does not work here: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "delete", scratch], check=True)


def interface_names() -> set[str]:
    """Every interface name the topology uses: bridges, and both ends of each cable."""
    names = {netns.bridge(network) for network in netns.NETWORKS}
    for service, networks in netns.TOPOLOGY.items():
        names.update(netns.port(service, network) for network in networks)
    return names


def remove_leftovers() -> None:
    """Namespaces of earlier test runs killed before their clean-up (that pid is gone)."""
    for name in namespaces_with("rgt"):
        match = re.fullmatch(r"rgt(\d+)-[a-z]+", name)
        if match and not Path(f"/proc/{match[1]}").exists():
            netns.down(f"rgt{match[1]}-")


@pytest.fixture
def prefix(can_make_namespaces: None) -> Iterator[str]:
    """The topology up under a prefix of this test run's own; all of it removed afterwards."""
    prefix = f"rgt{os.getpid()}-"
    remove_leftovers()
    links_before = root_links()
    try:
        netns.up(prefix)
        yield prefix
    finally:
        netns.down(prefix)  # also stops whatever still runs in the namespaces
    assert namespaces_with(prefix) == []
    # The bridges and cables lived inside the namespaces: none of them is in the host's.
    assert not (root_links() - links_before) & interface_names()


@pytest.fixture
def roles(prefix: str) -> Iterator[list[Any]]:
    """Started roles (netns.Role); each one stopped at the end, whatever happened."""
    started: list[Any] = []
    yield started
    for role in reversed(started):
        role.stop()


def start(roles: list[Any], prefix: str, label: str, service: str, argv: list[str]) -> Any:
    """Start a role in its namespace and wait for the log line that says it is ready."""
    ready = {"server": "listening on", "gateway": "gateway listening", "client": "connected to"}
    role = netns.start(label, service, argv, prefix=prefix, out=sys.stdout)
    roles.append(role)
    assert role.wait_for(ready[service], timeout=15), "".join(role.lines)
    return role


# Runs inside a namespace: GET a URL until it answers `want` or the deadline passes
# (a bounded poll: the state it waits for is in other processes), then print what came.
# http.client, not urllib: no proxy from the environment can get in the way.
PROBE_GET = """
import http.client, json, sys, time
host, port, path, want, wait = sys.argv[1:]
deadline = time.monotonic() + float(wait)
while True:
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        conn.request("GET", path)
        answer = conn.getresponse()
        got = [answer.status, answer.getheader("X-Revgw-Error"), answer.read().decode()]
        conn.close()
    except OSError as exc:
        got = [None, None, repr(exc)]
    if got[0] == int(want) or time.monotonic() > deadline:
        print(json.dumps(got))
        break
    time.sleep(0.1)
"""

# Runs inside a namespace: one TCP connect with a 2 s bound; prints "connected" or the error.
PROBE_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("connected")
except OSError as exc:
    print(f"failed: {exc}")
"""


def get_from(prefix: str, service: str, want: int, wait: float = 10) -> list[Any]:
    """GET /ping from ``service``'s namespace until the status is ``want`` (or ``wait`` s)."""
    host = str(netns.address("gateway", "producer-gateway"))
    argv = [sys.executable, "-c", PROBE_GET, host, str(netns.PUBLIC_PORT), "/ping", str(want)]
    done = subprocess.run(
        netns.in_namespace(service, [*argv, str(wait)], prefix),
        capture_output=True,
        text=True,
        timeout=wait + 10,
    )
    assert done.returncode == 0, done.stderr
    result: list[Any] = json.loads(done.stdout)
    return result


def connect_from(prefix: str, service: str, host: str, port: int) -> str:
    argv = [sys.executable, "-c", PROBE_CONNECT, host, str(port)]
    done = subprocess.run(
        netns.in_namespace(service, argv, prefix), capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_producer_reaches_the_server_only_through_the_tunnel(prefix: str, roles: list[Any]) -> None:
    server = str(netns.address("server", "client-server"))
    start(roles, prefix, "server", "server", netns.server_command())
    start(roles, prefix, "gateway", "gateway", netns.gateway_command(TOKEN))
    client = start(roles, prefix, "client", "client", netns.client_command(TOKEN, "test-1"))

    # (a) No way from the producer's namespace to the server's address ...
    assert connect_from(prefix, "producer", server, netns.SERVER_PORT).startswith("failed:")
    # ... although the server is there: the client, on its network, connects.
    assert connect_from(prefix, "client", server, netns.SERVER_PORT) == "connected"
    # Nothing routes between networks, whatever the host's own setting is.
    for service in ("gateway", "client"):
        forwarding = netns.in_namespace(service, ["cat", "/proc/sys/net/ipv4/ip_forward"], prefix)
        assert subprocess.run(forwarding, capture_output=True, text=True).stdout == "0\n"

    # (b) Through the gateway's public side, /ping answers pong.
    assert get_from(prefix, "producer", 200) == [200, None, "pong"]

    # (c) The client dies: the gateway answers 503, tunnel offline.
    client.process.send_signal(signal.SIGKILL)
    client.process.wait()
    status, error, _ = get_from(prefix, "producer", 503)
    assert (status, error) == (503, "tunnel-offline")

    # (d) A client comes back: pong again.
    start(roles, prefix, "client", "client", netns.client_command(TOKEN, "test-2"))
    assert get_from(prefix, "producer", 200) == [200, None, "pong"]
