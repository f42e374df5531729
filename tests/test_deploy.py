"""The systemd units and the install script: ``systemd-analyze verify`` and the security
rating where systemd-analyze exists; the units' keys (notify, watchdog, restart,
hardening) and command lines that the CLI accepts; ``install.sh --dry-run`` prints the
steps and changes nothing."""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shlex
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
INSTALL = ROOT / "deploy" / "install.sh"
EXEC = "/opt/gateway/venv/bin/gateway"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """``section -> key -> values`` (a key may repeat; an empty value resets a list)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate((UNITS / name).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        assert current is not None and "=" in line, f"{name}:{number}: {raw!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        current[key].append(value)
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section[key]
    assert len(values) == 1, (key, values)
    return values[0]


def environment(service: dict[str, list[str]]) -> dict[str, str]:
    return dict(item.split("=", 1) for line in service["Environment"] for item in shlex.split(line))


# --- the units' content ----------------------------------------------------------------------


def test_gateway_unit_notify_watchdog_restart_and_hardening() -> None:
    u = unit("gateway.service")
    service = u["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert int(one(service, "WatchdogSec")) > 0
    assert one(service, "Restart") == "always"
    assert one(u["Unit"], "StartLimitIntervalSec") == "0"  # never give up restarting
    assert one(u["Install"], "WantedBy") == "multi-user.target"
    # a dedicated user reaching the serial ports through dialout, with no privileges
    assert one(service, "User") == "gateway" and one(service, "Group") == "gateway"
    assert one(service, "SupplementaryGroups") == "dialout"
    assert one(service, "CapabilityBoundingSet") == ""
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "RestrictSUIDSGID",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
    ):
        assert one(service, key) == "yes", key
    # writable: the state directory only (and the runtime directory of the socket)
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "StateDirectory") == "gateway"
    assert service["ReadWritePaths"] == ["/var/lib/gateway"]
    assert one(service, "RuntimeDirectory") == "gateway"
    # devices: serial ports only
    assert one(service, "DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in service["DeviceAllow"]}
    assert {"char-ttyUSB", "char-ttyAMA"} <= allowed
    assert all(re.fullmatch(r"char-tty\w+ rw", v) for v in service["DeviceAllow"])
    assert "PrivateDevices" not in service  # it would hide the serial ports
    assert service["SystemCallFilter"][0] == "@system-service"
    # the command line: what gateway run accepts, writing where the unit lets it
    argv = shlex.split(one(service, "ExecStart"))
    assert argv[:2] == [EXEC, "run"]
    from gateway.cmd.run import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(argv[2:])
    assert args.config == "/etc/gateway/gateway.yaml"
    assert Path(args.store).parent == Path("/var/lib/gateway")
    assert Path(args.socket).parent == Path("/run/gateway")


def test_master_unit_hardening_and_command_line() -> None:
    u = unit("gateway-master.service")
    service = u["Service"]
    assert one(service, "Restart") == "always"
    assert one(service, "User") == "gateway-master"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "StateDirectory") == "gateway-master"
    assert service["ReadWritePaths"] == ["/var/lib/gateway-master"]
    assert one(service, "PrivateDevices") == "yes"
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "CapabilityBoundingSet") == ""
    assert "mosquitto.service" in one(u["Unit"], "After")
    env = environment(service)
    line = one(service, "ExecStart")
    for name, value in env.items():
        line = line.replace("${" + name + "}", value)
    assert "${" not in line
    argv = shlex.split(line)
    assert argv[:3] == [EXEC, "master", "run"]
    from gateway.cmd.master import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(argv[2:])
    assert Path(args.db).parent == Path("/var/lib/gateway-master")
    assert args.prefix == "gw"


# --- systemd-analyze -------------------------------------------------------------------------


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool is not None
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def staged(tmp_path: Path, name: str, extra: str = "") -> Path:
    """The unit with its ExecStart pointed at an executable that exists here."""
    stand_in = tmp_path / "bin" / "gateway"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = (UNITS / name).read_text().replace(EXEC, str(stand_in))
    path = tmp_path / name
    path.write_text(text.replace("[Service]\n", "[Service]\n" + extra, 1))
    return path


@pytest.mark.parametrize(
    ("name", "max_exposure"), [("gateway.service", 2.5), ("gateway-master.service", 2.0)]
)
def test_systemd_analyze_verify_and_security(
    tmp_path: Path, name: str, max_exposure: float
) -> None:
    """Where systemd-analyze exists (Debian's systemd package): verify says nothing, and
    the offline security rating stays low.  Elsewhere the parse above is all we have."""
    if shutil.which("systemd-analyze") is None:
        assert unit(name)["Service"]  # at least it parses; say so in the report
        return
    got = analyze("verify", str(staged(tmp_path, name)))
    assert got.returncode == 0 and got.stdout == "" and got.stderr == "", got
    # the check can fail: a misspelt key or a bad device right is reported
    bad = analyze("verify", str(staged(tmp_path, name, "ProtectSytem=strict\n")))
    assert "Unknown key 'ProtectSytem'" in bad.stderr
    version = int(re.search(r"systemd (\d+)", analyze("--version").stdout).group(1))  # type: ignore[union-attr]
    if version >= 252:  # --offline appeared in 252
        rating = analyze("security", "--offline=yes", str(staged(tmp_path, name)))
        found = re.search(r"Overall exposure level for \S+: ([\d.]+)", rating.stdout)
        assert found, rating
        assert float(found.group(1)) <= max_exposure, rating.stdout


# --- install.sh --dry-run ----------------------------------------------------------------


TOUCHED = [
    "/opt/gateway",
    "/etc/gateway",
    "/etc/systemd/system/gateway.service",
    "/etc/systemd/system/gateway-master.service",
    "/usr/local/bin/gateway",
]


def machine_state() -> tuple[object, ...]:
    passwd = Path("/etc/passwd").read_text()
    return (passwd, *(os.path.lexists(p) for p in TOUCHED))


def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), "--dry-run", *args], capture_output=True, text=True, timeout=60
    )


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_install_dry_run_prints_the_steps_and_changes_nothing(tmp_path: Path) -> None:
    before = machine_state()
    got = dry_run()
    assert got.returncode == 0, got.stderr
    out = got.stdout
    commands = [line[2:] for line in out.splitlines() if line.startswith("+ ")]
    if user_exists("gateway"):
        assert "install: user gateway exists" in out
    else:
        assert any(
            c.startswith("useradd --system --user-group") and c.endswith(" gateway")
            for c in commands
        )
    if not os.path.exists("/opt/gateway/venv/bin/python"):
        assert "python3 -m venv /opt/gateway/venv" in commands
    # non-editable, from a clean copy, the fast path compiled or the install fails
    (pip,) = [c for c in commands if "pip install -q /tmp/gateway-build." in c]
    assert pip.startswith("env GATEWAY_REQUIRE_COMPILED=1 /opt/gateway/venv/bin/python -m pip")
    assert " -e " not in pip and str(ROOT) not in pip
    assert "/opt/gateway/venv/bin/gateway doctor" in commands
    assert (
        f"install -m 0644 {ROOT}/deploy/systemd/gateway.service /etc/systemd/system/gateway.service"
        in commands
        or "install: /etc/systemd/system/gateway.service up to date" in out
    )
    assert commands.index("systemctl daemon-reload") < commands.index(
        "systemctl enable gateway.service"
    )
    if not os.path.exists("/etc/gateway/gateway.yaml"):
        # the example is installed, and the service is not started on it
        assert any(
            c.endswith("gateway/examples/gateway.yaml /etc/gateway/gateway.yaml") for c in commands
        )
        assert not any(c.startswith(("systemctl start", "systemctl restart")) for c in commands)
        assert "gateway.service enabled, not started" in out
    assert "gateway-master" not in out
    assert machine_state() == before
    assert not list(Path("/tmp").glob("gateway-build.*"))


def test_install_dry_run_with_a_config_and_the_master(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text((ROOT / "gateway" / "examples" / "gateway.yaml").read_text())
    before = machine_state()
    got = dry_run("--config", str(config), "--with-master")
    assert got.returncode == 0, got.stderr
    commands = [line[2:] for line in got.stdout.splitlines() if line.startswith("+ ")]
    if not os.path.exists("/etc/gateway/gateway.yaml"):
        assert f"install -m 0640 -o root -g gateway {config} /etc/gateway/gateway.yaml" in commands
    # the package changed (a dry run always rebuilds): both services restart
    assert commands[-2:] == [
        "systemctl enable gateway-master.service",
        "systemctl restart gateway-master.service",
    ]
    assert "systemctl restart gateway.service" in commands
    assert any(
        c.startswith("useradd") and c.endswith(" gateway-master") for c in commands
    ) or user_exists("gateway-master")
    assert machine_state() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option --bogus"),
        (["--config", "/nonexistent/site.yaml"], "no such file: /nonexistent/site.yaml"),
    ],
)
def test_install_refuses_bad_arguments(args: list[str], message: str) -> None:
    got = dry_run(*args)
    assert got.returncode == 2 and message in got.stderr
