"""The tools a run needs (nginx, wrk), installing them from Debian packages if allowed,
and a description of the machine for the report."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
from pathlib import Path

# nginx lives in /usr/sbin, which is not on every user's PATH.
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
REPO = Path(__file__).resolve().parent.parent


def which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH)


class Installer:
    """``apt-get install`` as root or through passwordless sudo; ``apt-get update`` once."""

    def __init__(self, say: list[str]) -> None:
        self.say = say
        self._updated = False

    def _apt(self, *args: str) -> bool:
        prefix: list[str] = []
        if os.geteuid() != 0:
            sudo = which("sudo")
            if not sudo:
                self.say.append("apt-get needs root and there is no sudo")
                return False
            prefix = [sudo, "-n"]
        apt = which("apt-get")
        if not apt:
            self.say.append("no apt-get on this machine")
            return False
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            done = subprocess.run(
                [*prefix, apt, *args], env=env, capture_output=True, timeout=600, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.say.append(f"apt-get {' '.join(args)} failed: {exc}")
            return False
        return done.returncode == 0

    def install(self, command: str, packages: list[str]) -> str | None:
        """Install the first package of ``packages`` that works; the path of ``command`` or None."""
        if not self._updated:
            self._updated = True
            self._apt("update", "-q")
        for package in packages:
            if self._apt("install", "-y", "-q", "--no-install-recommends", package):
                found = which(command)
                if found:
                    self.say.append(f"installed {package} from Debian packages")
                    return found
        return None


def find_tool(command: str, packages: list[str], installer: Installer | None) -> str | None:
    found = which(command)
    if found or installer is None:
        return found
    return installer.install(command, packages)


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def loop_name(choice: str) -> str:
    """What ``REVGW_LOOP=choice`` gives the revgw processes."""
    if choice == "asyncio":
        return "asyncio"
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio (uvloop not installed)"


CONNTRACK_STATS = Path("/proc/net/stat/nf_conntrack")


def conntrack_drops(stats: Path = CONNTRACK_STATS) -> int | None:
    """Packets the kernel's connection tracking has dropped since boot; None if it is not loaded.

    Docker's firewall rules load it. Each closed connection keeps an entry for
    two minutes, so fresh-connection load can fill its table; then SYNs are
    dropped, a connection waits a second to retry, and a round reads far too
    low. The report says so when it happened during the run.
    """
    try:
        header, *per_cpu = stats.read_text().splitlines()
    except OSError:
        return None
    column = header.split().index("drop")
    return sum(int(line.split()[column], 16) for line in per_cpu if line.strip())


def machine(loop: str) -> dict[str, object]:
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "memory_mib": memory_total_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loop": loop_name(loop),
        "revgw_commit": git_commit(),
    }
