"""design.md's layering, checked in a fresh interpreter: the pure layers load nothing
else of the package.

``gateway.protocols`` (wire formats, topics, quantities, line timing) and
``gateway.fastpath`` (the rating kernel, its twin and tables) sit at the bottom: every
other layer may import them, they import no other ``gateway`` module.  Each test imports
every module of its layer (found on disk, so a new file is covered without editing the
test) in a subprocess and lists the ``gateway`` modules then in ``sys.modules``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gateway

PACKAGE = Path(gateway.__file__).parent


def modules_on_disk(layer: str) -> list[str]:
    """Every module of ``gateway.<layer>`` by its file: .py sources and built extensions."""
    root = PACKAGE / layer
    names = set()
    for path in root.rglob("*"):
        if "__pycache__" in path.parts or path.suffix not in (".py", ".so"):
            continue
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        parts[-1] = parts[-1].split(".")[0]  # _engine.cpython-311-x86_64-linux-gnu -> _engine
        if parts[-1] == "__init__":
            parts.pop()
        names.add(".".join(["gateway", *parts]))
    return sorted(names)


def loaded_after_importing(modules: list[str]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'gateway')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("layer", ["protocols", "fastpath"])
def test_layer_imports_nothing_else_of_the_package(layer: str) -> None:
    modules = modules_on_disk(layer)
    assert f"gateway.{layer}" in modules and len(modules) > 3, modules
    loaded = loaded_after_importing(modules)
    assert set(modules) <= set(loaded)  # every module did load: the check saw them all
    prefix = f"gateway.{layer}"
    outside = [
        m for m in loaded if m != "gateway" and m != prefix and not m.startswith(prefix + ".")
    ]
    assert outside == [], f"gateway.{layer} pulls in {outside}"


def test_the_check_sees_a_stray_import() -> None:
    # The same listing, with one module of another layer imported alongside: it shows.
    loaded = loaded_after_importing(["gateway.protocols.topics", "gateway.clock"])
    assert "gateway.clock" in loaded and "gateway.protocols.topics" in loaded
