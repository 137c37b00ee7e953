"""Build revgw, with the gateway's hot path compiled by mypyc when it can be.

Everything else about the package is in pyproject.toml. The modules below
carry every request through the gateway; mypyc turns their (strictly typed)
Python into a C extension, which halves the gateway's own CPU per request.
The source stays the one a reader reads: the compiled modules are built from
it, and the plain Python is what runs wherever they are not built.

REVGW_COMPILE picks: ``auto`` (the default) compiles when a C compiler and the
Python headers are here, and builds plain Python with a warning when not; an
editable install (``pip install -e``) stays plain, since a compiled module
would hide every edit. ``1`` must compile (a failure fails the build); ``0``
never compiles.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HOT_PATH = [
    "src/revgw/_http.py",
    "src/revgw/_caller.py",
    "src/revgw/_public_port.py",
    "src/revgw/_exchange.py",
    "src/revgw/_tunnel_conn.py",
    "src/revgw/_pool.py",
    "src/revgw/_metrics.py",
]


# setup.py commands that build code; pip also runs this file only to read metadata.
_BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}
_EDITABLE = {"editable_wheel", "develop"}


def _warn(message: str) -> None:
    sys.stderr.write(f"revgw: {message}; building plain Python (slower, same behaviour)\n")


def _missing_toolchain() -> str | None:
    """Why compiling cannot work here, or None."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h; Debian: python3-dev)"
    return None


def _required() -> bool:
    return os.environ.get("REVGW_COMPILE", "auto") == "1"


class OptionalBuildExt(build_ext):
    """Under ``auto``, a failed compile means plain Python, not a failed install.

    All or nothing: the compiled modules import a shared runtime module, so a
    partial build is removed rather than installed.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # distutils' compile and link errors
            if _required():
                raise
            _warn(f"compiling the hot path failed ({exc})")
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []


def ext_modules() -> list[Extension]:
    if os.environ.get("REVGW_COMPILE", "auto") == "0":
        return []
    commands = set(sys.argv[1:])
    if not _BUILDS & commands:
        return []  # metadata only (pip asks for it first): no need to run mypyc for that
    if _EDITABLE & commands and not _required():
        return []  # an install made for editing: a compiled module would hide each edit
    missing = _missing_toolchain()
    if missing is not None and not _required():
        _warn(missing)
        return []
    try:
        # Imported only here: mypy is a build requirement, absent at run time.
        from mypyc.build import mypycify  # noqa: PLC0415

        # group_name: the shared runtime is the module revgw__mypyc, not a hash.
        return list(mypycify(HOT_PATH, opt_level="3", group_name="revgw"))
    except (Exception, SystemExit) as exc:  # mypy found an error, or is missing
        if _required():
            raise
        _warn(f"mypyc could not translate the hot path ({exc!r})")
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
