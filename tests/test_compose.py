"""Static checks of the Compose demo, the per-role Dockerfiles, the Makefile and the scripts.

None of these needs a Docker engine: they read the files, and run `make` with a stub
`docker` on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("producer", "gateway", "client", "server")
NETWORKS = {"producer-gateway", "gateway-client", "client-server"}
NO_ENGINE = "No Docker engine is running here; try 'make local' for the same demo in one process."


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], role: str) -> dict[str, Any]:
    svc = compose["services"][role]
    assert isinstance(svc, dict)
    return svc


def networks_of(svc: dict[str, Any]) -> set[str]:
    nets = svc.get("networks", [])
    return set(nets)  # a list of names or a mapping keyed by name


def environment_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def with_defaults(value: object) -> str:
    """Compose's ``${VAR:-default}`` read with nothing set: what a fresh shell gets."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", str(value))


def dockerfile_of(svc: dict[str, Any]) -> Path:
    build = svc["build"]
    assert isinstance(build, dict), "build must name its dockerfile"
    return ROOT / str(build.get("context", ".")) / str(build["dockerfile"])


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list), args
    return [str(a) for a in parsed]


def dockerfile_argv(path: Path) -> list[str]:
    """What the image runs by default: ENTRYPOINT followed by CMD (exec form)."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    for word, rest in dockerfile_instructions(path):
        if word == "ENTRYPOINT":
            entrypoint = exec_form(rest)
        elif word == "CMD":
            cmd = exec_form(rest)
    return entrypoint + cmd


def test_services_and_networks(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == set(ROLES)
    assert set(compose["networks"]) == NETWORKS
    for net in NETWORKS:
        assert compose["networks"][net]["driver"] == "bridge"


def test_gateway_publishes_9000(compose: dict[str, Any]) -> None:
    published = set()
    for port in service(compose, "gateway").get("ports", []):
        if isinstance(port, dict):
            published.add((str(port["published"]), str(port["target"])))
        else:
            host, _, container = with_defaults(port).rpartition(":")
            published.add((host.rpartition(":")[2], container.split("/")[0]))
    assert ("9000", "9000") in published


def test_only_the_gateway_publishes_ports(compose: dict[str, Any]) -> None:
    for role in ROLES:
        if role != "gateway":
            assert not service(compose, role).get("ports"), role


def test_producer_cannot_reach_server_directly(compose: dict[str, Any]) -> None:
    producer = networks_of(service(compose, "producer"))
    server = networks_of(service(compose, "server"))
    assert server == {"client-server"}
    assert not producer & server
    assert networks_of(service(compose, "gateway")) == {"producer-gateway", "gateway-client"}
    assert networks_of(service(compose, "client")) == {"gateway-client", "client-server"}
    for role in ROLES:
        assert networks_of(service(compose, role)) <= NETWORKS, role


def test_client_has_two_replicas(compose: dict[str, Any]) -> None:
    client = service(compose, "client")
    assert client["deploy"]["replicas"] == 2
    assert client["deploy"].get("mode", "replicated") == "replicated"
    # docker-compose 1.29 refuses a service that sets both.
    assert "scale" not in client


@pytest.mark.parametrize("role", ROLES)
def test_service_builds_and_runs_its_role(compose: dict[str, Any], role: str) -> None:
    svc = service(compose, role)
    dockerfile = dockerfile_of(svc)
    assert dockerfile == ROOT / "cmd" / role / "Dockerfile"
    assert dockerfile.is_file()
    assert dockerfile_argv(dockerfile) == ["revgw", role]
    assert svc["command"] == ["revgw", role]
    assert svc.get("init") is True


def test_client_and_gateway_share_the_token(compose: dict[str, Any]) -> None:
    gateway = environment_of(service(compose, "gateway"))
    client = environment_of(service(compose, "client"))
    assert gateway["REVGW_TOKEN"]
    assert client["REVGW_TOKEN"] == gateway["REVGW_TOKEN"]


def test_environment_is_revgw_only(compose: dict[str, Any]) -> None:
    for role in ROLES:
        for name in environment_of(service(compose, role)):
            assert name.startswith("REVGW_"), (role, name)
    text = (ROOT / "docker-compose.yml").read_text()
    for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text):
        assert name.startswith("REVGW_"), name


def test_addresses_match_the_topology(compose: dict[str, Any]) -> None:
    assert environment_of(service(compose, "producer"))["REVGW_URL"].startswith(
        "http://gateway:9000/"
    )
    client = environment_of(service(compose, "client"))
    assert client["REVGW_GATEWAY"] == "gateway:9001"
    assert client["REVGW_TARGET"] == "server:8080"


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions split at each FROM (the FROM starts its stage)."""
    out: list[list[tuple[str, str]]] = [[]]
    for word, rest in dockerfile_instructions(path):
        if word == "FROM":
            out.append([])
        out[-1].append((word, rest))
    return out


@pytest.mark.parametrize("role", ROLES)
def test_dockerfile_base_and_user(role: str) -> None:
    instructions = dockerfile_instructions(ROOT / "cmd" / role / "Dockerfile")
    words = [word for word, _ in instructions]
    assert instructions[0][0] == "ARG"
    assert instructions[0][1] == "BASE_IMAGE=python:3.11-slim"
    froms = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert froms and set(froms) == {"${BASE_IMAGE}"}, "every stage starts from the one base"
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, "the image must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"root", "0"}
    # The last USER comes before the command it runs.
    assert words.index("CMD") > len(words) - 1 - words[::-1].index("USER")


@pytest.mark.parametrize("role", ROLES)
def test_dockerfile_final_stage_has_no_build_tools(role: str) -> None:
    *_, build, final = stages(ROOT / "cmd" / role / "Dockerfile")
    assert build[0] == ("FROM", "${BASE_IMAGE} AS build")
    assert any("pip install" in rest for word, rest in build if word == "RUN")
    assert final[0] == ("FROM", "${BASE_IMAGE}")
    # The final stage takes the built venv, and nothing else from the build context.
    copies = [rest for word, rest in final if word in {"COPY", "ADD"}]
    assert copies == ["--from=build /opt/revgw /opt/revgw"]
    for word, rest in final:
        if word == "RUN":
            assert not re.search(r"\b(pip|apt-get|gcc|make)\b", rest), rest


@pytest.mark.parametrize(
    ("role", "probe"), [("gateway", "create_connection(('127.0.0.1', 9000)"), ("server", "/ping")]
)
def test_gateway_and_server_images_have_a_healthcheck(role: str, probe: str) -> None:
    checks = [
        rest
        for word, rest in dockerfile_instructions(ROOT / "cmd" / role / "Dockerfile")
        if word == "HEALTHCHECK"
    ]
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")
    assert exec_form(command)[:2] == ["python3", "-c"]
    assert probe in exec_form(command)[2]
    assert "--interval=" in options and "--retries=" in options


@pytest.mark.parametrize("role", ROLES)
def test_images_build_from_the_base_named_by_the_environment(
    compose: dict[str, Any], role: str
) -> None:
    args = service(compose, role)["build"]["args"]
    assert args == {"BASE_IMAGE": "${REVGW_BASE_IMAGE:-python:3.11-slim}"}


def test_one_file_for_compose_v1_and_v2(compose: dict[str, Any]) -> None:
    # No `version:` (Compose v2 warns about it); docker-compose 1.29 reads the
    # Compose Specification without it. `up --wait` and the like are v2 only, so
    # readiness is expressed in depends_on conditions, which both honour.
    assert "version" not in compose


def dependencies(compose: dict[str, Any], role: str) -> dict[str, str]:
    depends = service(compose, role).get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec["condition"] for name, spec in depends.items()}


def test_the_producer_starts_once_the_chain_is_ready(compose: dict[str, Any]) -> None:
    assert dependencies(compose, "producer") == {"gateway": "service_healthy"}
    # The gateway is healthy once GET /ping through it answers 200: it needs a
    # client and the server, so the chain works end to end.
    check = service(compose, "gateway")["healthcheck"]
    assert check["test"][:3] == ["CMD", "python3", "-c"]
    assert "http://127.0.0.1:9000/ping" in check["test"][3]
    assert "start_period" in check
    # No deadlock: the clients wait for the gateway to start, not to be healthy,
    # and for the server to answer (its image's healthcheck).
    assert dependencies(compose, "client") == {
        "gateway": "service_started",
        "server": "service_healthy",
    }
    assert dependencies(compose, "gateway") == {}
    assert dependencies(compose, "server") == {}


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Everything is left out but what the Dockerfiles COPY (a file left out fails
    # the image build, and only where a Docker engine runs).
    copied = {
        source.rstrip("/")
        for role in ROLES
        for word, rest in dockerfile_instructions(ROOT / "cmd" / role / "Dockerfile")
        if word == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    }
    assert lines[0] == "*"
    kept = {line[1:] for line in lines if line.startswith("!")}
    assert kept == copied
    assert {"pyproject.toml", "setup.py", "README.md", "src", "examples"} <= kept


@pytest.mark.parametrize("path", [".ci/run", "cmd/prepare-docker.sh"])
def test_scripts_are_executable_bash(path: str) -> None:
    script = ROOT / path
    assert os.access(script, os.X_OK)
    assert "set -euo pipefail" in script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_ci_prepares_docker_before_the_tests() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    main = text[text.index("\nmain() {") :]
    assert "cmd/prepare-docker.sh" in text
    assert main.index("prepare_docker") < main.index("run_tests")
    assert "REVGW_BASE_IMAGE" in text


# --- Makefile ---------------------------------------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    if path is not None:
        env["PATH"] = path
    with subprocess.Popen(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a timeout can stop make and all it started
    ) as proc:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stub(directory: Path, name: str, script: str) -> None:
    directory.mkdir(exist_ok=True)
    exe = directory / name
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)


@needs_make
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("test", ["ruff check", "ruff format --check", "mypy", "pytest"]),
        ("local", ["revgw demo"]),
    ],
)
def test_make_dry_run(target: str, expected: list[str]) -> None:
    result = make("-n", target)
    assert result.returncode == 0, result.stderr
    positions = [result.stdout.find(step) for step in expected]
    assert all(p >= 0 for p in positions), result.stdout
    assert positions == sorted(positions), result.stdout


@needs_make
def test_make_without_docker_engine_points_to_local(tmp_path: Path) -> None:
    stub(tmp_path / "bin", "docker", "exit 1\n")
    result = make(path=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == NO_ENGINE


@needs_make
@pytest.mark.parametrize(
    ("compose_v2", "expected"),
    [(True, "docker compose up --build"), (False, "docker-compose up --build")],
)
def test_make_with_docker_engine_runs_compose(
    tmp_path: Path, compose_v2: bool, expected: str
) -> None:
    log = tmp_path / "calls"
    bindir = tmp_path / "bin"
    version_rc = 0 if compose_v2 else 1
    stub(
        bindir,
        "docker",
        f'echo "docker $*" >> "{log}"\n'
        f'[ "$1 $2" = "compose version" ] && exit {version_rc}\n'
        "exit 0\n",
    )
    stub(bindir, "docker-compose", f'echo "docker-compose $*" >> "{log}"\n')
    result = make(path=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr
    assert NO_ENGINE not in result.stdout
    assert log.read_text().splitlines()[-1] == expected
