"""Yes/no settings read as plain switches on the command line."""

from __future__ import annotations

import pytest

from revgw._cli import build_parser, settings_from
from revgw._settings import ClientSettings


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], False), (["--tls"], True), (["--tls", "no"], False), (["--tls", "yes"], True)],
)
def test_tls_is_a_switch_that_also_takes_yes_or_no(argv: list[str], expected: bool) -> None:
    args = build_parser().parse_args(["client", "--token", "t", *argv])
    assert settings_from(ClientSettings, args, {}).tls is expected


def test_trust_on_first_use_is_a_switch() -> None:
    args = build_parser().parse_args(["client", "--token", "t", "--trust-on-first-use"])
    assert settings_from(ClientSettings, args, {}).trust_on_first_use is True
