"""Read docs/tutorial.md as a script, and replay it against the real ``revgw`` command.

The tutorial is written for people; these conventions make it runnable too
(a short version sits in an HTML comment at the top of the tutorial):

Steps
    Only fenced blocks whose info string is ``console`` are steps; ``sh``
    and other blocks are for reading only. A step is a ``console`` block,
    optionally preceded (blank lines between are fine) by a directive
    comment ``<!-- test: KIND [TERMINAL] [; OPTION]... -->``:

    (no directive) or ``run``
        Run each ``$ command`` in a shell, wait for it to exit, and compare
        everything it printed (stdout and stderr) with the lines after it,
        up to the next ``$`` line, exactly.
    ``background TERMINAL``
        The block's single ``$ command`` starts a long-running process in a
        terminal of that name (the learner opens a new window); the lines
        after it must appear in its output.
    ``expect TERMINAL``
        No command: these lines must appear next in that terminal's output.
    ``ctrl-c TERMINAL``
        Press Ctrl-C there (SIGINT); the process must exit with status 0,
        and the block's lines must be among its last output.
    ``skip``
        Not run (say in the text why).

    Options: ``any order`` (the lines may appear in any order, as when
    two connections finish at once) and ``needs TOOL`` (run only where TOOL
    is installed; in CI a missing TOOL fails the test instead).

    A terminal's expected lines must appear in the order shown, each after
    the lines the previous block for that terminal matched; other lines may
    come in between (the test waits, bounded, for each). A ``$`` line
    ending in `` \\`` continues on the next line.

Matching
    Before comparing, in the document's lines and in the real output alike,
    what legitimately differs from run to run is replaced by a placeholder:
    clock times (``12:00:01.057``), latencies (``0.3ms``), durations with
    decimals (``retrying in 0.2 s``), hex strings of 16 digits or more
    (nonces, keys, MACs), five-digit port numbers after a colon (the
    ephemeral ports; the fixed ports 8080, 8081, 9000, 9001 have four
    digits and must match), and connection numbers (``#3``). ``…`` in the
    document matches any text within one line. A leading ``^C`` (the
    terminal echoing Ctrl-C) and trailing white space are ignored.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("run", "background", "expect", "ctrl-c", "skip")
DIRECTIVE = re.compile(r"^<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<info>[\w-]*)\s*$")
WILDCARD = "…"

# What varies between runs, replaced in both the document and the output before comparing.
RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b\d{2}:\d{2}:\d{2}\.\d{3}\b"), "<time>"),
    (re.compile(r"\b\d+(?:\.\d+)?ms\b"), "<ms>"),
    (re.compile(r"\b\d+\.\d+ s\b"), "<seconds> s"),
    (re.compile(r"\b[0-9a-f]{16,}\b"), "<hex>"),
    (re.compile(r"(?<=:)\d{5}\b"), "<port>"),
    (re.compile(r"#\d+\b"), "#<n>"),
]


def normalise(line: str) -> str:
    line = line.rstrip()
    for pattern, placeholder in RULES:
        line = pattern.sub(placeholder, line)
    return line


def pattern_of(doc_line: str) -> re.Pattern[str]:
    """The regular expression a line shown in the document stands for."""
    text = normalise(doc_line.removeprefix("^C"))
    parts = [re.escape(part) for part in text.split(WILDCARD)]
    return re.compile(".*?".join(parts))


def matches(doc_line: str, real_line: str) -> bool:
    return pattern_of(doc_line).fullmatch(normalise(real_line)) is not None


@dataclass
class Command:
    text: str
    output: list[str]


@dataclass
class Step:
    kind: str
    line_no: int  # of the opening fence, for messages
    terminal: str = ""
    any_order: bool = False
    needs: list[str] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # expected in a terminal

    def where(self) -> str:
        return f"docs/tutorial.md:{self.line_no}"


class TutorialError(ValueError):
    """The document breaks the conventions above."""


def _directive(body: str, line_no: int) -> Step:
    head, *options = [part.strip() for part in body.split(";")]
    words = head.split()
    if not words or words[0] not in KINDS:
        raise TutorialError(f"line {line_no}: unknown directive {body!r}; kinds: {KINDS}")
    kind = words[0]
    wants_terminal = kind in ("background", "expect", "ctrl-c")
    if wants_terminal != (len(words) == 2) or len(words) > 2:
        raise TutorialError(
            f"line {line_no}: {kind!r} takes {'one' if wants_terminal else 'no'} terminal name"
        )
    step = Step(kind, line_no, terminal=words[1] if wants_terminal else "")
    for option in options:
        if option == "any order":
            step.any_order = True
        elif option.startswith("needs "):
            step.needs.append(option.removeprefix("needs ").strip())
        else:
            raise TutorialError(f"line {line_no}: unknown option {option!r}")
    return step


def _commands(block: list[str], step: Step) -> None:
    """Split a console block into ``$`` commands (with their output) and loose lines."""
    current: Command | None = None
    continuing = False
    for line in block:
        if continuing and current is not None:
            current.text += " " + line.strip().removesuffix("\\").strip()
            continuing = line.rstrip().endswith("\\")
        elif line.startswith("$ "):
            command = line[2:].strip()
            continuing = command.endswith("\\")
            current = Command(command.removesuffix("\\").strip(), [])
            step.commands.append(current)
        elif current is not None:
            current.output.append(line)
        else:
            step.lines.append(line)


def parse(text: str) -> list[Step]:
    steps: list[Step] = []
    pending: Step | None = None
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = DIRECTIVE.match(line)
        fence = FENCE.match(line)
        if directive:
            pending = _directive(directive["body"], index + 1)
        elif fence:
            end = index + 1
            while end < len(lines) and lines[end].rstrip() != "```":
                end += 1
            if end == len(lines):
                raise TutorialError(f"line {index + 1}: unclosed code block")
            block = lines[index + 1 : end]
            if fence["info"] == "console":
                step = pending or Step("run", index + 1)
                step.line_no = index + 1
                _commands(block, step)
                _check(step)
                steps.append(step)
            elif pending is not None:
                raise TutorialError(
                    f"line {pending.line_no}: a directive must precede a ```console block"
                )
            pending = None
            index = end
        elif line.strip() and pending is not None:
            raise TutorialError(f"line {pending.line_no}: directive not followed by a block")
        index += 1
    if pending is not None:
        raise TutorialError(f"line {pending.line_no}: directive at the end of the document")
    return steps


def _check(step: Step) -> None:
    where = step.where()
    if step.kind == "run":
        if not step.commands or step.lines:
            raise TutorialError(f"{where}: a run block starts with a $ command")
    elif step.kind == "background":
        if len(step.commands) != 1 or step.lines:
            raise TutorialError(f"{where}: a background block has exactly one $ command, first")
        step.lines = step.commands[0].output
    elif step.kind in ("expect", "ctrl-c") and step.commands:
        raise TutorialError(f"{where}: an {step.kind} block has no $ command")


# --- running it --------------------------------------------------------------------------


class Terminal:
    """One long-running command, its output collected in a file."""

    def __init__(self, name: str, command: str, log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.command = command
        self.log = log
        self.cursor = 0  # lines before this one were matched by earlier blocks
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", "exec " + command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own group: cleanup can kill all of it
            )

    def output(self) -> list[str]:
        """Complete lines so far (a line still being written is left for later)."""
        text = self.log.read_bytes().decode(errors="replace")
        return text.split("\n")[:-1]

    def describe(self) -> str:
        lines = self.output()
        shown = "\n".join(
            f"  {'>' if i == self.cursor else ' '} {line}" for i, line in enumerate(lines)
        )
        return f"terminal {self.name!r} ($ {self.command}), output so far:\n{shown or '  (none)'}"

    def _find(self, lines: list[str], expected: list[str], any_order: bool) -> int | None:
        """Match ``expected`` from the cursor on; the index after the last match, or None."""
        position = self.cursor
        used: set[int] = set()
        last = self.cursor - 1
        for doc_line in expected:
            start = self.cursor if any_order else position
            found = next(
                (
                    i
                    for i in range(start, len(lines))
                    if i not in used and matches(doc_line, lines[i])
                ),
                None,
            )
            if found is None:
                return None
            used.add(found)
            position = found + 1
            last = max(last, found)
        return last + 1

    def expect(self, expected: list[str], any_order: bool, timeout: float, where: str) -> None:
        # Polling an external process's log: a bounded loop, not a sleep for readiness.
        deadline = time.monotonic() + timeout
        while True:
            exited = self.process.poll() is not None
            found = self._find(self.output(), expected, any_order)
            if found is not None:
                self.cursor = found
                return
            if exited or time.monotonic() > deadline:
                why = "the process exited" if exited else f"not seen within {timeout:g} s"
                wanted = "\n".join(f"    {line}" for line in expected)
                raise AssertionError(
                    f"{where}: expected in terminal {self.name!r} ({why}):\n{wanted}\n"
                    f"{self.describe()}"
                )
            time.sleep(0.05)

    def interrupt(self, timeout: float, where: str) -> None:
        """Ctrl-C: SIGINT, then it must exit 0 within ``timeout``."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{where}: terminal {self.name!r} did not stop within {timeout:g} s of Ctrl-C\n"
                f"{self.describe()}"
            ) from None
        assert code == 0, f"{where}: exit status {code} after Ctrl-C\n{self.describe()}"

    def kill(self) -> None:
        """Cleanup: kill what is still running, whole process group and all."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def run_command(command: str, env: dict[str, str], cwd: Path, timeout: float) -> list[str]:
    done = subprocess.run(
        ["bash", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
    return done.stdout.decode(errors="replace").replace("\r", "").split("\n")


def compare(command: Command, real: list[str], where: str) -> None:
    def trim(lines: list[str]) -> list[str]:
        lines = [line.rstrip() for line in lines]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    shown, got = trim(command.output), trim(real)
    ok = len(shown) == len(got) and all(matches(d, r) for d, r in zip(shown, got, strict=True))
    if not ok:
        raise AssertionError(
            f"{where}: `$ {command.text}` printed something else.\n--- the document shows:\n"
            + "\n".join(shown)
            + "\n--- it printed:\n"
            + "\n".join(got)
        )
