"""The README's library example runs as shown and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import revgw._errors as errors

README = Path(__file__).parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(
        r"<!-- readme-example: start -->\n```python\n(.*?)```\n<!-- readme-example: end -->",
        text,
        re.S,
    )
    assert match, "the README lost its marked library example"
    return match.group(1)


def test_readme_library_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello from behind NAT"


def test_readme_lists_every_error_code() -> None:
    text = README.read_text()
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.HTTPError)
        and cls is not errors.HTTPError
    }
    for code in codes:
        assert f"`{code}`" in text, f"README's error table misses {code}"
