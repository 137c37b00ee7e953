"""The compose demo without Docker: four Linux network namespaces on three bridges.

    python examples/netns/netns.py up       # build the namespaces, bridges and links
    python examples/netns/netns.py demo     # up, run the five processes, Ctrl-C, down
    python examples/netns/netns.py status   # what exists now, and what runs in it
    python examples/netns/netns.py down     # remove everything (safe to run twice)

Each service of docker-compose.yml gets a network namespace of its own
(``revgw-producer``, ``revgw-gateway``, ``revgw-client``, ``revgw-server``): its own
interfaces, addresses, routes and ports, just like a container. Each compose
network becomes a Linux bridge, and each (service, network) pair a veth cable
from the service's namespace to that bridge:

    namespace         bridge: producer-gateway   gateway-client   client-server
                              10.77.1.0/24       10.77.2.0/24     10.77.3.0/24
    revgw-producer            .10
    revgw-gateway             .20                .20
    revgw-client                                 .30              .30
    revgw-server                                                  .40

Network number n is 10.77.n.0/24, and a service has the same host number on
every network it joins (producer .10, gateway .20, client .30, server .40).
No namespace has a default route and none forwards packets (forwarding is
switched off explicitly: a new namespace inherits the host's setting), so a
namespace reaches only the networks it is on: the producer has no way to the server's
10.77.3.40 except through the gateway and the tunnels the client dials to it.

Where the bridges live: in a fifth namespace, ``revgw-net``, not in the host's
own (root) namespace. So the demo adds no interface to the host, the host's
firewall rules never see its packets, two runs with different ``--prefix``
values can use the same addresses side by side, and ``down`` is just "delete
the namespaces" (deleting a namespace deletes every interface in it, and a veth
dies with either of its ends). Inside a namespace the bridges and the interfaces
are named after the compose networks; a Linux interface name has at most 15
characters, so ``producer-gateway`` (16) is called ``producer-gw`` there
(``BRIDGE_SHORT_NAMES``). The bridge side of each cable is ``<service>-<n>``,
e.g. ``gateway-1`` is the gateway's port on network 1.

Every ``ip`` command that ``up`` and ``down`` run is printed, so the program
doubles as a recipe to do the same by hand. It needs root and iproute2.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Final, TextIO

# --- the topology: the same services and networks as docker-compose.yml ----------------

# service -> the compose networks it joins (tests/test_netns.py checks this against
# docker-compose.yml, so the two cannot drift apart).
TOPOLOGY: Final[dict[str, tuple[str, ...]]] = {
    "producer": ("producer-gateway",),
    "gateway": ("producer-gateway", "gateway-client"),
    "client": ("gateway-client", "client-server"),
    "server": ("client-server",),
}
# Network n (1, 2, 3) is 10.77.n.0/24.
NETWORKS: Final[tuple[str, ...]] = ("producer-gateway", "gateway-client", "client-server")
HOST_NUMBER: Final[dict[str, int]] = {"producer": 10, "gateway": 20, "client": 30, "server": 40}
IFNAME_MAX: Final = 15  # Linux: IFNAMSIZ (16) minus the terminating NUL
BRIDGE_SHORT_NAMES: Final[dict[str, str]] = {"producer-gateway": "producer-gw"}

DEFAULT_PREFIX: Final = "revgw-"
SWITCH: Final = "net"  # the namespace that holds the bridges is <prefix>net
PUBLIC_PORT: Final = 9000
TUNNEL_PORT: Final = 9001
SERVER_PORT: Final = 8080
DEMO_TOKEN: Final = "netns-demo-token-change-me"
STOP_WAIT: Final = 3.0  # seconds a role gets to exit after SIGINT before SIGKILL
START_WAIT: Final = 15.0  # seconds a role gets to say it is ready


class NetnsError(Exception):
    """An ``ip`` command failed, or the topology is not in the state asked for."""


def network_number(network: str) -> int:
    return NETWORKS.index(network) + 1


def subnet(network: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.77.{network_number(network)}.0/24")


def address(service: str, network: str) -> ipaddress.IPv4Address:
    """The address of ``service`` on ``network``, e.g. gateway on producer-gateway: 10.77.1.20."""
    if network not in TOPOLOGY[service]:
        raise KeyError(f"{service} is not on {network}")
    return subnet(network).network_address + HOST_NUMBER[service]


def bridge(network: str) -> str:
    """The interface name for ``network``: the bridge, and the service-side end of a veth."""
    name = network if len(network) <= IFNAME_MAX else BRIDGE_SHORT_NAMES[network]
    assert len(name) <= IFNAME_MAX, name
    return name


def port(service: str, network: str) -> str:
    """The bridge-side end of the veth that joins ``service`` to ``network``."""
    return f"{service}-{network_number(network)}"


def namespace(service: str, prefix: str = DEFAULT_PREFIX) -> str:
    return prefix + service


def switch_namespace(prefix: str = DEFAULT_PREFIX) -> str:
    return prefix + SWITCH


def all_namespaces(prefix: str = DEFAULT_PREFIX) -> list[str]:
    return [switch_namespace(prefix), *(namespace(s, prefix) for s in TOPOLOGY)]


# --- running ip ---------------------------------------------------------------------------

Echo = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


def ip(command: str, echo: Echo = _quiet) -> str:
    """Run ``ip COMMAND``, show it through ``echo``, return its output; raise NetnsError on failure.

    ``command`` is split on blanks: every name here is made of letters, digits and dashes.
    """
    echo(f"+ ip {command}")
    done = subprocess.run(["ip", *command.split()], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = done.stderr.strip() or f"exit {done.returncode}"
        raise NetnsError(f"ip {command}: {why}")
    return done.stdout


def existing_namespaces(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Those of this prefix's namespaces that exist now (``ip netns list``)."""
    present = {line.split()[0] for line in ip("netns list").splitlines() if line.strip()}
    return [ns for ns in all_namespaces(prefix) if ns in present]


def namespace_pids(ns: str) -> list[int]:
    return [int(pid) for pid in ip(f"netns pids {ns}").split()]


# --- up, down, status ------------------------------------------------------------------------


def up(prefix: str = DEFAULT_PREFIX, echo: Echo = _quiet) -> None:
    """Create the namespaces, bridges and veth cables; on any failure remove them again."""
    found = existing_namespaces(prefix)
    if found:
        raise NetnsError(
            f"{', '.join(found)} already exist: another demo may be running; "
            f"'netns.py down{_prefix_flag(prefix)}' removes them"
        )
    switch = switch_namespace(prefix)
    try:
        ip(f"netns add {switch}", echo)
        for network in NETWORKS:
            ip(f"-n {switch} link add {bridge(network)} type bridge", echo)
            ip(f"-n {switch} link set {bridge(network)} up", echo)
        for service, networks in TOPOLOGY.items():
            ns = namespace(service, prefix)
            ip(f"netns add {ns}", echo)
            ip(f"-n {ns} link set lo up", echo)
            # A new namespace inherits the host's IPv4 settings, and a host that runs
            # Docker forwards packets (ip_forward=1): switch forwarding off here.
            _no_forwarding(ns, echo)
            for network in networks:
                # One veth pair (a cable): the port end stays in the switch namespace,
                # plugged into the bridge; the other end goes into the service's namespace
                # and gets the service's address on that network.
                end, cable = bridge(network), port(service, network)
                ip(f"-n {switch} link add {cable} type veth peer name {end} netns {ns}", echo)
                ip(f"-n {switch} link set {cable} master {bridge(network)} up", echo)
                ip(f"-n {ns} addr add {address(service, network)}/24 dev {end}", echo)
                ip(f"-n {ns} link set {end} up", echo)
    except BaseException:
        down(prefix)
        raise


def _no_forwarding(ns: str, echo: Echo) -> None:
    script = "echo 0 > /proc/sys/net/ipv4/ip_forward"
    echo(f"+ ip netns exec {ns} sh -c '{script}'")
    argv = ["ip", "netns", "exec", ns, "sh", "-c", script]
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"{ns}: cannot switch forwarding off: {done.stderr.decode().strip()}")


def down(prefix: str = DEFAULT_PREFIX, echo: Echo = _quiet) -> None:
    """Stop whatever still runs in this prefix's namespaces and delete them (idempotent)."""
    for ns in existing_namespaces(prefix):
        for pid in namespace_pids(ns):
            echo(f"+ kill -KILL {pid}  # still running in {ns}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        ip(f"netns delete {ns}", echo)


def status(prefix: str = DEFAULT_PREFIX) -> str:
    """What exists: each bridge with its ports, each namespace's addresses and processes."""
    found = existing_namespaces(prefix)
    if not found:
        return f"no namespace named {prefix}* exists (run 'netns.py up{_prefix_flag(prefix)}')"
    lines: list[str] = []
    for ns in found:
        lines.append(f"{ns}:")
        if ns == switch_namespace(prefix):
            for network in NETWORKS:
                listing = ip(f"-n {ns} -o link show master {bridge(network)}")
                ports = [line.split(":")[1].strip().split("@")[0] for line in listing.splitlines()]
                lines.append(f"    bridge {bridge(network)} ({network}): {', '.join(ports)}")
        else:
            for line in ip(f"-n {ns} -brief -4 address show").splitlines():
                lines.append("    " + " ".join(line.split()))
        for pid in namespace_pids(ns):
            lines.append(f"    pid {pid}: {_command_line(pid)}")
    return "\n".join(lines)


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(arg.decode(errors="replace") for arg in f.read().split(b"\0") if arg)
    except OSError:
        return "?"


def _prefix_flag(prefix: str) -> str:
    return "" if prefix == DEFAULT_PREFIX else f" --prefix {prefix}"


# --- the roles, each in its namespace -------------------------------------------------------


def in_namespace(service: str, argv: Sequence[str], prefix: str = DEFAULT_PREFIX) -> list[str]:
    """``argv`` run inside ``service``'s namespace. ``ip netns exec`` execs it: same pid."""
    return ["ip", "netns", "exec", namespace(service, prefix), *argv]


def revgw(role: str, *flags: str) -> list[str]:
    """``revgw ROLE FLAGS`` with this interpreter, so it is the revgw installed beside us."""
    return [sys.executable, "-m", "revgw", role, *flags]


def server_command() -> list[str]:
    return revgw("server", "--listen", f"0.0.0.0:{SERVER_PORT}")


def gateway_command(token: str, *flags: str) -> list[str]:
    listen = ("--listen", f"0.0.0.0:{PUBLIC_PORT}", "--tunnel-listen", f"0.0.0.0:{TUNNEL_PORT}")
    return revgw("gateway", *listen, "--token", token, *flags)


def client_command(token: str, client_id: str, pool: int = 4) -> list[str]:
    return revgw(
        "client",
        "--gateway", f"{address('gateway', 'gateway-client')}:{TUNNEL_PORT}",
        "--target", f"{address('server', 'client-server')}:{SERVER_PORT}",
        "--token", token,
        "--pool", str(pool),
        "--client-id", client_id,
    )  # fmt: skip


def public_url(path: str = "/ping") -> str:
    """The gateway's public side as the producer sees it: http://10.77.1.20:9000/ping."""
    return f"http://{address('gateway', 'producer-gateway')}:{PUBLIC_PORT}{path}"


def producer_command(interval: float = 1.0) -> list[str]:
    return revgw("producer", "--url", public_url(), "--interval", str(interval))


@dataclass
class Role:
    """One process running in a namespace, its output copied line by line with a label."""

    label: str
    process: subprocess.Popen[str]
    out: TextIO | None
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _pump: threading.Thread | None = None

    def _copy_output(self, on_exit: threading.Event | None) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if self.out is not None:
                self.out.write(f"{self.label:<8} | {line}")
                self.out.flush()
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        self.process.stdout.close()
        self.process.wait()
        with self._changed:
            self._changed.notify_all()
        if on_exit is not None:
            on_exit.set()

    def wait_for(self, pattern: str, timeout: float) -> bool:
        """Wait for a line of output that matches ``pattern``; False if the role ended first."""
        regex = re.compile(pattern)
        with self._changed:
            return self._changed.wait_for(
                lambda: (
                    any(regex.search(line) for line in self.lines)
                    or self.process.poll() is not None
                ),
                timeout,
            ) and any(regex.search(line) for line in self.lines)

    def stop(self) -> None:
        """SIGINT (revgw stops within 2 s, exit 0), then SIGKILL if it is still there."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._pump is not None:
            self._pump.join()


def start(
    label: str,
    service: str,
    argv: Sequence[str],
    *,
    prefix: str = DEFAULT_PREFIX,
    out: TextIO | None = None,
    on_exit: threading.Event | None = None,
) -> Role:
    """Start ``argv`` in ``service``'s namespace; its output goes to ``out`` as ``label | line``."""
    process = subprocess.Popen(
        in_namespace(service, argv, prefix),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # Its own session: a Ctrl-C in the terminal reaches only this program, which
        # then stops the roles one by one, in order.
        start_new_session=True,
    )
    role = Role(label, process, out)
    role._pump = threading.Thread(target=role._copy_output, args=(on_exit,), daemon=True)
    role._pump.start()
    return role


def demo(prefix: str = DEFAULT_PREFIX, out: TextIO = sys.stdout) -> int:
    """Up, start server, gateway, two clients and a producer; run until Ctrl-C; down."""

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    roles: list[Role] = []
    exited = threading.Event()

    def run(label: str, service: str, argv: list[str], ready: str | None) -> None:
        roles.append(start(label, service, argv, prefix=prefix, out=out, on_exit=exited))
        if ready is not None and not roles[-1].wait_for(ready, START_WAIT):
            raise NetnsError(f"{label} did not get ready within {START_WAIT:g} s")

    # Ctrl-C and SIGTERM raise KeyboardInterrupt here, even in a shell's background job,
    # which starts with SIGINT ignored.
    handlers = signal.signal(signal.SIGINT, _interrupt), signal.signal(signal.SIGTERM, _interrupt)
    try:
        # Outside the inner try: if the namespaces exist already (another demo?), they are
        # left alone. up() removes what it made itself if it fails half-way.
        up(prefix, echo=say)
        say(_addresses())
        try:
            run("server", "server", server_command(), ready="listening on")
            run("gateway", "gateway", gateway_command(DEMO_TOKEN), ready="gateway listening")
            for number in (1, 2):
                argv = client_command(DEMO_TOKEN, f"netns-client-{number}")
                run(f"client-{number}", "client", argv, ready="connected to gateway")
            run("producer", "producer", producer_command(), ready=None)
            try_it = f"ip netns exec {namespace('producer', prefix)} curl {public_url()}"
            say(f"demo running; Ctrl-C stops it. Try: {try_it}")
            exited.wait()
            gone = next(r for r in roles if r.process.poll() is not None)
            say(f"{gone.label} exited with code {gone.process.returncode}; stopping the demo")
            return 1
        except KeyboardInterrupt:
            say("interrupted; stopping the demo")
            return 0
        finally:
            # No second Ctrl-C half-way through the clean-up: it takes a few seconds at most.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            for role in reversed(roles):  # the producer first, the server last
                role.stop()
            down(prefix, echo=say)
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _addresses() -> str:
    lines = ["addresses:"]
    for service, networks in TOPOLOGY.items():
        where = ", ".join(f"{address(service, n)} on {n}" for n in networks)
        lines.append(f"  {service:<8} {where}")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="netns.py",
        description="revgw's compose demo in four network namespaces on three bridges (root).",
    )
    parser.add_argument("command", choices=("up", "down", "demo", "status"))
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"start of every namespace name (default: {DEFAULT_PREFIX})",
    )
    args = parser.parse_args(argv)
    prefix: str = args.prefix
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", prefix):
        parser.error(f"--prefix {prefix!r}: use up to 32 letters, digits, '.', '_' or '-'")
    if shutil.which("ip") is None:
        print("netns.py: needs the 'ip' command (Debian: apt-get install iproute2)")
        return 1
    if args.command != "status" and os.geteuid() != 0:
        print("netns.py: network namespaces need root; run it as root (e.g. sudo make netns-demo)")
        return 1
    try:
        if args.command == "up":
            up(prefix, echo=print)
            print(_addresses())
        elif args.command == "down":
            down(prefix, echo=print)
        elif args.command == "status":
            print(status(prefix))
        else:
            return demo(prefix)
    except NetnsError as exc:
        print(f"netns.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # during up or down, which clean up after themselves
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
