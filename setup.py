"""Build script: compiles the prepaid fast path (Cython) when a C compiler is there.

`pip install .` tries to build ``gateway.fastpath._engine`` from its ``.pyx``.  When
no compiler is available the build is skipped with a warning and the package falls
back to the pure-Python twin at import time (``gateway doctor`` says which is active).
Set ``GATEWAY_REQUIRE_COMPILED=1`` to make a failed build an error (CI does).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE = os.environ.get("GATEWAY_REQUIRE_COMPILED") == "1"


class OptionalBuildExt(build_ext):
    """build_ext that degrades to the pure twin instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler present but the build failed
            self._skip(exc)

    def _skip(self, exc: Exception) -> None:
        if REQUIRE:
            raise exc
        sys.stderr.write(
            f"WARNING: fast path not compiled ({exc}); the pure-Python twin will be used\n"
        )


def extensions() -> list[Extension]:
    from Cython.Build import cythonize

    return cythonize(
        [Extension("gateway.fastpath._engine", ["gateway/fastpath/_engine.pyx"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
