"""Yes/no settings read as plain switches on the command line."""

from __future__ import annotations

import pytest

from revgw import Gateway
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


def test_a_generated_token_works_as_printed_on_the_command_line() -> None:
    # A token starting with "-" made the printed client command fail: argparse
    # took it for a flag (about one generated token in 64).
    parser = build_parser()
    for _ in range(200):
        token = Gateway(listen="127.0.0.1:0", tunnel_listen="127.0.0.1:0").token
        assert token is not None
        args = parser.parse_args(["client", "--gateway", "h:1", "--token", token])
        assert settings_from(ClientSettings, args, {}).token == token
