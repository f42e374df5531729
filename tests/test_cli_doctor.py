"""``gateway doctor`` lists the ``cryptography`` package (the signed commands' Ed25519)
with the other dependencies, as installed."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata


def test_doctor_lists_cryptography() -> None:
    installed = metadata.version("cryptography")
    as_json = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(as_json.stdout)["dependencies"]["cryptography"] == installed
    human = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = human.stdout.splitlines()
    assert [line.split() for line in lines if line.startswith("cryptography")] == [
        ["cryptography", installed]
    ]
