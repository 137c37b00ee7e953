"""Shared by the harnesses: run under atheris when it is installed, else replay files.

A harness is ``python fuzz/fuzz_X.py [libFuzzer options] [CORPUS_DIR | FILE ...]``.
With atheris, libFuzzer runs (files given alone are replayed once each, a
directory is a corpus to grow). Without atheris, or with ``--replay``, every
file named (directories: every file in them) is fed to ``test_one_input`` once;
the exit status is 0 when nothing unexpected escaped.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path


def corpus_files(args: list[str]) -> list[Path]:
    files: list[Path] = []
    for arg in args:
        path = Path(arg)
        files += sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return files


def replay(test_one_input: Callable[[bytes], None], args: list[str]) -> int:
    failures = 0
    files = corpus_files(args)
    for path in files:
        try:
            test_one_input(path.read_bytes())
        except Exception:  # the harness's whole point: report anything that escapes
            failures += 1
            sys.stderr.write(f"FAIL {path}\n")
            traceback.print_exc()
    sys.stderr.write(f"replayed {len(files)} inputs, {failures} failed\n")
    return 1 if failures else 0


def main(test_one_input: Callable[[bytes], None], atheris: object | None) -> None:
    args = sys.argv[1:]
    if atheris is None or "--replay" in args:
        sys.exit(replay(test_one_input, [a for a in args if not a.startswith("-")]))
    atheris.Setup(sys.argv, test_one_input)  # type: ignore[attr-defined]
    atheris.Fuzz()  # type: ignore[attr-defined]


def pieces(data: bytes, step: int) -> list[bytes]:
    """``data`` cut every ``step`` bytes (0: whole), so every split point gets exercised."""
    if step == 0:
        return [data]
    return [data[i : i + step] for i in range(0, len(data), step)] or [b""]
