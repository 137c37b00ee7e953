"""``--config FILE``: settings from a TOML file, checked against the role's settings.

Keys are the settings' names (``pool_wait = 5``, ``host = ["a", "b"]``). Top-level
keys apply to every role that reads the file and must be settings of it; a
``[gateway]`` / ``[client]`` / ... table applies only to that role (and wins over
the top level), so one file can serve several roles. A key that is not a setting
of the role reading it is an error naming the key and the file: a typo must not
be ignored silently. Precedence: defaults < file < ``REVGW_*`` < flags (_cli).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import ConfigError
from ._settings import setting

ROLES = ("gateway", "client", "server", "producer", "demo")


@dataclass(frozen=True)
class LogSettings:
    """What every role logs and how; lives here so a config file can set it too."""

    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "how much to log: debug, info, warning or error", "LEVEL"
    )
    log_format: Literal["text", "json"] = setting(
        "text", "text for people, json for one JSON object per line", "text|json"
    )
    access_log: bool = setting(
        True, "one log line per request (tunnel, status, bytes, latency)", "yes|no"
    )


def hints(cls: type) -> dict[str, Any]:
    """Setting name -> type hint, for the fields of a settings dataclass."""
    resolved = typing.get_type_hints(cls)
    return {field.name: resolved[field.name] for field in dataclasses.fields(cls)}


def read(path: str, role: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The settings ``path`` gives ``role``: name -> value, types checked against ``fields``."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
    section = data.get(role, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {role} must be a table ([{role}]), not {section!r}")
    values: dict[str, Any] = {}
    for table, prefix in ((data, ""), (section, f"[{role}] ")):
        for key, value in table.items():
            if table is data and key in ROLES and isinstance(value, dict):
                continue  # a table for some role; its own role reads it below
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError(
                    f"{path}: unknown key {prefix}{key!r}: not a setting of revgw {role}"
                )
            values[name] = check(fields[name], value, f"{path}: {prefix}{key}")
    return values


def check(hint: Any, value: Any, where: str) -> Any:
    """``value`` as the setting's type, or ConfigError saying what was expected."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    origin = typing.get_origin(hint)
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return tuple(items)
        raise ConfigError(f"{where}: expected a string or a list of strings, not {value!r}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, not {value!r}")
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise ConfigError(f"{where}: expected {kind.get(hint, hint)}, not {value!r}")
