"""``--config FILE`` (TOML), ``REVGW_CONFIG``, precedence and ``--print-config``; deploy/ files."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

import pytest

from revgw._cli import main

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def revgw(
    *argv: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, **env: str
) -> tuple[int, list[str], list[str]]:
    """``revgw *argv`` in-process with exactly ``env`` as REVGW_* settings: code, out, err."""
    for name in [n for n in os.environ if n.startswith("REVGW_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    captured = capsys.readouterr()
    code = exit_.value.code
    assert isinstance(code, int)
    return code, captured.out.splitlines(), captured.err.splitlines()


def effective(lines: list[str]) -> dict[str, tuple[str, str]]:
    """``--print-config`` lines as name -> (value, source)."""
    table = {}
    for line in lines:
        setting, _, source = line.partition("  # ")
        if setting.startswith("# "):
            table[setting.split()[1]] = ("unset", source)
        else:
            name, _, value = setting.partition(" = ")
            table[name] = (value, source)
    return table


@pytest.fixture
def gateway_toml(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'pool_wait = 5\nheartbeat = 3\nidle_timeout = 30\ntoken = "s3cret"\n'
        'trusted_proxies = ["10.0.0.0/8"]\nlog_format = "json"\n'
        '[client]\npool = 3\nhost = ["a.example", "b.example"]\n'
    )
    return path


def test_precedence_defaults_file_env_flags(
    gateway_toml: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = revgw(
        "gateway", "--config", str(gateway_toml), "--print-config", "--heartbeat", "2",
        capsys=capsys, monkeypatch=monkeypatch,
        REVGW_HEARTBEAT="4", REVGW_IDLE_TIMEOUT="40",
    )  # fmt: skip
    assert (code, err) == (0, [])
    shown = effective(out)
    file = f"file {gateway_toml}"
    assert shown["max_warm"] == ("64", "default")
    assert shown["pool_wait"] == ("5.0", file)
    assert shown["idle_timeout"] == ("40.0", "env REVGW_IDLE_TIMEOUT")
    assert shown["heartbeat"] == ("2.0", "flag")
    assert shown["trusted_proxies"] == ('["10.0.0.0/8"]', file)
    assert shown["token"] == ('"***"', file)  # the secret itself is never printed
    assert "s3cret" not in "\n".join(out)
    assert shown["tls_cert"] == ("unset", "default")
    assert shown["log_format"] == ('"json"', file)
    assert shown["access_log"] == ("true", "default")


def test_role_table_and_revgw_config(
    gateway_toml: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file serves several roles: the [client] table is read by the client only."""
    gateway_toml.write_text('token = "s3cret"\n[client]\npool = 3\nhost = ["a.example"]\n')
    code, out, err = revgw(
        "client", "--print-config", "--pool", "4",
        capsys=capsys, monkeypatch=monkeypatch, REVGW_CONFIG=str(gateway_toml),
    )  # fmt: skip
    assert (code, err) == (0, [])
    shown = effective(out)
    assert shown["host"] == ('["a.example"]', f"file {gateway_toml}")
    assert shown["pool"] == ("4", "flag")
    code, out, err = revgw(
        "gateway", "--print-config", capsys=capsys, monkeypatch=monkeypatch,
        REVGW_CONFIG=str(gateway_toml),
    )  # fmt: skip
    assert (code, err) == (0, [])  # the gateway ignores the [client] table


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("pool_wiat = 5\n", "unknown key 'pool_wiat'"),
        ("[gateway]\nbogus = 1\n", "unknown key [gateway] 'bogus'"),
        ("pool = 3\n", "unknown key 'pool'"),  # a client setting, not the gateway's
        ('pool_wait = "soon"\n', "pool_wait: expected a number"),
        ('log_format = "xml"\n', "log_format: expected one of text, json"),
        ("pool_wait = \n", "not valid TOML"),
        ("heartbeat = -1\n", "--heartbeat must be greater than 0"),
    ],
)
def test_a_bad_file_exits_2_with_one_line_naming_key_and_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    says: str,
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, out, err = revgw("gateway", "--config", str(path), capsys=capsys, monkeypatch=monkeypatch)
    assert (code, out, len(err)) == (2, [], 1), err
    assert err[0].startswith("revgw gateway: error: ")
    assert says in err[0]
    if "must be" not in says:  # the dataclass check names the flag, not the file
        assert str(path) in err[0]


def test_a_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.toml"
    code, _, err = revgw("server", "--config", str(missing), capsys=capsys, monkeypatch=monkeypatch)
    assert (code, len(err)) == (2, 1)
    assert f"--config {missing}: No such file" in err[0]


# --- deploy/ --------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["gateway", "client"])
def test_deploy_config_examples_are_valid(
    role: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    example = DEPLOY / f"{role}.toml"
    code, out, err = revgw(
        role, "--config", str(example), "--print-config",
        capsys=capsys, monkeypatch=monkeypatch, REVGW_TOKEN="from-the-env-file",
    )  # fmt: skip
    assert (code, err) == (0, [])
    assert sum(f"# file {example}" in line for line in out) >= 3


@pytest.mark.parametrize("role", ["gateway", "client"])
def test_systemd_units_run_the_role_with_its_config_and_hardening(role: str) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / f"revgw-{role}.service").read_text())
    service = unit["Service"]
    command = service["ExecStart"].split()
    assert command[:2] == ["/usr/local/bin/revgw", role]
    config = command[command.index("--config") + 1]
    assert config == f"/etc/revgw/{role}.toml"
    assert (DEPLOY / Path(config).name).is_file()
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > 10  # above the default drain grace
    assert service["Restart"] == "on-failure"
    for option, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter": "@system-service",
    }.items():
        assert service[option] == value, option
    assert "CapabilityBoundingSet" in service
    assert unit["Install"]["WantedBy"] == "multi-user.target"
