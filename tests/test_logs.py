"""``--log-format json`` and ``--access-log no``, as a user sees them on stderr."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from helpers import get
from revgw._cli import _setup_logging, build_parser, resolve
from revgw._config import LogSettings
from revgw._gateway import Gateway


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """_setup_logging changes process-wide loggers: put them back for the other tests."""
    root, access = logging.getLogger("revgw"), logging.getLogger("revgw.access")
    saved = (root.handlers[:], root.level, root.propagate, access.level)
    yield
    root.handlers[:], root.level, root.propagate, access.level = saved


def log_settings(*flags: str) -> LogSettings:
    args = build_parser().parse_args(["gateway", *flags])
    settings: LogSettings = resolve(LogSettings, args, {})[0]
    return settings


async def test_json_lines_parse_with_time_level_role_message_and_access_fields(
    chain: Gateway, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    _setup_logging(log_settings("--log-format", "json"))
    response = await get(chain.address, "/ping")
    assert response.status == 200
    logging.getLogger("revgw.gateway").warning("a warning with %s", "args")
    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert entries, "nothing was logged"
    for entry in entries:
        assert {"time", "level", "role", "message"} <= entry.keys()
        assert entry["time"].endswith("Z")
    access = [e for e in entries if e["role"] == "access"]
    assert len(access) == 1
    assert access[0]["level"] == "info"
    assert access[0]["tunnel"] == "default"
    assert access[0]["status"] == 200
    assert access[0]["bytes"] > 0
    assert isinstance(access[0]["latency_ms"], float)
    assert '"GET /ping HTTP/1.1" 200' in access[0]["message"]
    warning = entries[-1]
    assert (warning["level"], warning["role"]) == ("warning", "gateway")
    assert warning["message"] == "a warning with args"


@pytest.mark.parametrize(("flags", "lines"), [((), 1), (("--access-log", "no"), 0)])
async def test_access_log_switch(
    chain: Gateway,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
    flags: tuple[str, ...],
    lines: int,
) -> None:
    _setup_logging(log_settings(*flags))
    assert (await get(chain.address, "/ping")).status == 200
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if '"GET /ping HTTP/1.1" 200' in line]) == lines, err
    assert logging.getLogger("revgw.access").isEnabledFor(logging.INFO) is bool(lines)


def test_access_log_and_format_come_from_the_environment_too() -> None:
    args = build_parser().parse_args(["gateway"])
    env = {"REVGW_ACCESS_LOG": "off", "REVGW_LOG_FORMAT": "JSON", "REVGW_LOG_LEVEL": "debug"}
    settings, sources = resolve(LogSettings, args, env)
    assert settings == LogSettings(log_level="debug", log_format="json", access_log=False)
    assert sources["access_log"] == "env REVGW_ACCESS_LOG"
