"""The docs tell the truth: docs/tutorial.md runs as written, docs/how-it-works.md names real code.

The tutorial test starts the real ``revgw`` command in several "terminals"
on the default ports (8080, 8081, 9000, 9001), runs every command the
tutorial shows and checks that the outputs still match what the document
shows. The conventions that make the document runnable are described in
``tests/tutorial_runner.py`` (and briefly at the top of the tutorial).

After editing the tutorial, take the outputs to show from a real run:
``.venv/bin/pytest tests/test_tutorial.py --basetemp=/tmp/tutorial`` leaves
every command's output and every terminal's log in
``/tmp/tutorial/test_tutorial_runs_as_written0/transcript.txt``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

from tutorial_runner import (
    Step,
    Terminal,
    TutorialError,
    compare,
    matches,
    normalise,
    parse,
    run_command,
)

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
HOW_IT_WORKS = ROOT / "docs" / "how-it-works.md"
PORTS = (8080, 8081, 9000, 9001)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

COMMAND_TIMEOUT = 20.0  # one foreground command (the silent nc waits 5 s for the gateway)
EXPECT_TIMEOUT = 15.0  # a log line to show up (a client re-dials after at most 10 s backoff)
STOP_TIMEOUT = 10.0  # a role after Ctrl-C (it promises 2 s)


def steps() -> list[Step]:
    return parse(TUTORIAL.read_text())


# --- the document itself -------------------------------------------------------------------


def test_tutorial_is_well_formed() -> None:
    """Every terminal is started before it is watched or stopped, and only once at a time."""
    running: set[str] = set()
    kinds = set()
    for step in steps():
        kinds.add(step.kind)
        where = step.where()
        if step.kind == "background":
            assert step.terminal not in running, f"{where}: {step.terminal} is already running"
            assert step.lines, f"{where}: show what the command prints when it starts"
            running.add(step.terminal)
        elif step.kind in ("expect", "ctrl-c"):
            assert step.terminal in running, f"{where}: {step.terminal} is not running here"
            if step.kind == "ctrl-c":
                running.remove(step.terminal)
        elif step.kind == "run":
            for command in step.commands:
                assert command.output, f"{where}: `$ {command.text}` shows no output"
    assert {"run", "background", "expect", "ctrl-c"} <= kinds


def test_tutorial_uses_the_installed_command() -> None:
    for step in steps():
        for command in step.commands:
            first = command.text.split()[0]
            assert first in ("revgw", "curl", "nc", "printf"), (
                f"{step.where()}: `{command.text}` - a learner may not have {first}"
            )


def test_the_normalisation_rules() -> None:
    real = '00:14:48.973 access   [default#12] 127.0.0.1:42860 "GET /ping HTTP/1.1" 200 103B 0.3ms'
    shown = '12:00:01.057 access   [default#1] 127.0.0.1:50000 "GET /ping HTTP/1.1" 200 103B 5.6ms'
    assert matches(shown, real)
    assert not matches(shown.replace("103B", "104B"), real)
    assert not matches(shown.replace(":50000", ":9000"), real)  # fixed ports must match
    assert matches(
        "REVGW/1 CHALLENGE nonce=… heartbeat=5", "REVGW/1 CHALLENGE nonce=ab heartbeat=5"
    )
    assert matches(
        "^C12:00:01.000 revgw    SIGINT received", "09:59:59.999 revgw    SIGINT received"
    )
    assert matches("retrying in 0.2 s", "retrying in 1.7 s")
    assert normalise("nonce=0123456789abcdef0123 ") == "nonce=<hex>"


def test_the_parser_refuses_what_it_cannot_run() -> None:
    with pytest.raises(TutorialError, match="unknown directive"):
        parse("<!-- test: launch x -->\n```console\n$ true\nx\n```\n")
    with pytest.raises(TutorialError, match="exactly one"):
        parse("<!-- test: background t -->\n```console\n$ a\n$ b\n```\n")
    with pytest.raises(TutorialError, match="must precede"):
        parse("<!-- test: expect t -->\n```sh\nx\n```\n")
    parsed = parse(
        "```sh\nnot run\n```\n"
        "<!-- test: expect t; any order; needs nc -->\n\n```console\na\nb\n```\n"
        "```console\n$ printf 'x\\n' \\\n  'y'\nx\n```\n"
    )
    assert [(s.kind, s.terminal, s.any_order, s.needs, s.lines) for s in parsed[:1]] == [
        ("expect", "t", True, ["nc"], ["a", "b"])
    ]
    assert parsed[1].commands[0].text == "printf 'x\\n' 'y'"


# --- running it ----------------------------------------------------------------------------


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _environment(home: Path) -> dict[str, str]:
    """The learner's shell: revgw on PATH (as after `. .venv/bin/activate`), no surprises."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("REVGW_") and not name.lower().endswith("_proxy")
    }
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["CURL_HOME"] = str(home)  # no ~/.curlrc of the machine's user
    env["NO_PROXY"] = env["no_proxy"] = "*"
    return env


def _require(tool: str, path: str, why: str) -> bool:
    """Whether ``tool`` is installed; in CI a missing tool is an error, not a skip."""
    if shutil.which(tool, path=path):
        return True
    if IN_CI:
        pytest.fail(f"{tool} is not installed, but CI must run {why}: .ci/run must install it")
    return False


def test_tutorial_runs_as_written(tmp_path: Path) -> None:
    env = _environment(tmp_path)
    assert shutil.which("revgw", path=env["PATH"]), "revgw is not installed in this venv"
    if not _require("curl", env["PATH"], "the tutorial"):
        pytest.skip("curl is not installed (apt-get install curl): the tutorial needs it")
    busy = [port for port in PORTS if _port_in_use(port)]
    if busy:
        pytest.skip(f"the tutorial uses the default ports, and {busy} are in use here")

    running: dict[str, Terminal] = {}
    started: list[Terminal] = []
    skipped: set[str] = set()  # tools missing here, whose steps did not run
    transcript: list[str] = []  # every real output, to paste from when the tutorial changes
    try:
        for step in steps():
            where = step.where()
            missing = [t for t in step.needs if not _require(t, env["PATH"], "every step")]
            if missing:
                skipped.update(missing)
                continue
            if step.kind == "skip":
                continue
            if step.kind == "run":
                for command in step.commands:
                    output = run_command(command.text, env, tmp_path, COMMAND_TIMEOUT)
                    transcript += [f"{where}: $ {command.text}", *output]
                    compare(command, output, where)
            elif step.kind == "background":
                log = tmp_path / f"{step.terminal}-{len(started)}.log"
                terminal = Terminal(step.terminal, step.commands[0].text, log, env)
                started.append(terminal)
                running[step.terminal] = terminal
                terminal.expect(step.lines, step.any_order, EXPECT_TIMEOUT, where)
            elif step.kind == "expect":
                running[step.terminal].expect(step.lines, step.any_order, EXPECT_TIMEOUT, where)
            elif step.kind == "ctrl-c":
                terminal = running.pop(step.terminal)
                terminal.interrupt(STOP_TIMEOUT, where)
                terminal.expect(step.lines, step.any_order, 0, where)
        # The tutorial ends with Ctrl-C in every terminal still open: each stops cleanly.
        for terminal in running.values():
            terminal.interrupt(STOP_TIMEOUT, "end of the tutorial")
    finally:
        for terminal in started:
            terminal.kill()
            transcript += [f"terminal {terminal.name}: $ {terminal.command}", *terminal.output()]
        (tmp_path / "transcript.txt").write_text("\n".join(transcript) + "\n")
    if skipped:
        tools = ", ".join(sorted(skipped))
        pytest.skip(f"every step passed except those that need {tools}, not installed here")


# --- docs/how-it-works.md ------------------------------------------------------------------

PATH_IN_DOC = re.compile(r"\b((?:src|examples|tests|docs|cmd|images|\.ci)/[\w./-]*\w)")
MODULE_IN_DOC = re.compile(r"`(_\w+\.py)`")
QUALIFIED_NAME = re.compile(r"`([A-Z]\w+)\.(\w+)`")
CLASS_NAME = re.compile(r"`([A-Z][a-z]\w*)`")
NOT_CODE = {"Host"}  # capitalised words in backticks that are not classes (an HTTP header)


def _source_text() -> str:
    files = [*(ROOT / "src" / "revgw").glob("*.py"), *(ROOT / "examples").rglob("*.py")]
    return "\n".join(path.read_text() for path in files)


@pytest.mark.parametrize("doc", [HOW_IT_WORKS, TUTORIAL], ids=lambda p: p.name)
def test_docs_name_only_code_that_exists(doc: Path) -> None:
    """Every path, module, class and ``Class.method`` a doc names is there: renames break this."""
    text = doc.read_text()
    paths = set(PATH_IN_DOC.findall(text))
    modules = set(MODULE_IN_DOC.findall(text))
    if doc is HOW_IT_WORKS:
        assert len(paths) >= 10, "how-it-works.md should point at the modules it explains"
    for path in sorted(paths):
        assert (ROOT / path).exists(), f"{doc.name} names {path}, which does not exist"
    for module in sorted(modules):
        assert (ROOT / "src" / "revgw" / module).exists(), f"{doc.name} names {module}"
    source = _source_text()
    for cls in sorted(set(CLASS_NAME.findall(text)) - NOT_CODE):
        assert re.search(rf"^class {cls}\b", source, re.M), f"{doc.name} names class {cls}"
    for cls, member in sorted(set(QUALIFIED_NAME.findall(text))):
        assert re.search(rf"^class {cls}\b", source, re.M), f"{doc.name} names class {cls}"
        member_defined = rf"\bdef {member}\b|\bself\.{member}\b\s*[:=]|^\s+{member}\s*[:=]"
        assert re.search(member_defined, source, re.M), f"{doc.name} names {cls}.{member}"
