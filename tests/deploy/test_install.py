"""`make install DESTDIR=...` lays out the tree; a second run changes nothing; the unit
passes `systemd-analyze verify` where that tool exists."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/opt/sensorcast"


def _install(destdir: Path, *flags: str, **env: str) -> str:
    out = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "install", f"DESTDIR={destdir}"]
        + ([f"INSTALL_FLAGS={' '.join(flags)}"] if flags else []),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under root: mode, mtime and content hash."""
    state = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        state[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return state


def test_install_lays_out_the_tree_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    first = _install(dest, "--no-venv")
    assert "wrote /etc/systemd/system/sensorcast.service" in first
    app = dest / PREFIX.lstrip("/") / "app"
    for rel in ("server/app.py", "server/migrations", "setup.cfg", "deploy/install.sh"):
        assert (app / rel).exists(), rel
    assert not list(app.rglob("__pycache__"))
    config = yaml.safe_load((dest / "etc/sensorcast/config.yaml").read_text())
    assert config["database"]["url"] == "sqlite:////var/lib/sensorcast/sensorcast.db"
    assert len(config["auth"]["jwt_secret"]) >= 32
    assert (dest / "etc/sensorcast/config.yaml").stat().st_mode & 0o777 == 0o640
    assert (dest / "etc/sensorcast/env").is_file()
    assert (dest / "var/lib/sensorcast").is_dir()
    unit = (dest / "etc/systemd/system/sensorcast.service").read_text()
    assert (
        f"ExecStart={PREFIX}/venv/bin/sensorcast --config /etc/sensorcast/config.yaml serve" in unit
    )
    for line in (
        "Type=notify",
        "User=sensorcast",
        "Group=sensorcast",
        "Restart=on-failure",
        "WatchdogSec=30",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/sensorcast",
        "EnvironmentFile=-/etc/sensorcast/env",
    ):
        assert line in unit.splitlines(), line
    assert "@" not in unit.replace("multi-user", "")

    # The operator's edits survive an upgrade; nothing else moves.
    (dest / "etc/sensorcast/config.yaml").write_text("server: {port: 9000}\n")
    before = _tree(dest)
    second = _install(dest, "--no-venv")
    assert "nothing to change" in second
    assert _tree(dest) == before


def test_upgrade_removes_files_gone_from_the_sources(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    _install(dest, "--no-venv")
    stale = dest / PREFIX.lstrip("/") / "app/server/gone.py"
    stale.write_text("")
    files = stale.parent.parent / ".files"
    files.write_text(files.read_text() + "server/gone.py\n")
    assert "removed /opt/sensorcast/app/server/gone.py" in _install(dest, "--no-venv")
    assert not stale.exists()


def test_install_builds_a_venv_running_the_installed_app(tmp_path: Path) -> None:
    """The real venv step; --no-deps only keeps the test from downloading every dependency
    (the full path is what `make install` runs)."""
    dest = tmp_path / "root"
    out = _install(dest, PIP_ARGS="--no-deps")
    assert "installed the venv in /opt/sensorcast/venv" in out
    venv = dest / PREFIX.lstrip("/") / "venv"
    assert (venv / "bin/sensorcast").is_file()
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import server; print(server.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where == str(dest / PREFIX.lstrip("/") / "app/server/__init__.py")
    assert "nothing to change" in _install(dest, PIP_ARGS="--no-deps")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    _install(dest, "--no-venv")
    unit = (dest / "etc/systemd/system/sensorcast.service").read_text()
    # verify wants ExecStart to exist: point it at a stand-in executable.
    fake = tmp_path / "sensorcast"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    checked = tmp_path / "sensorcast.service"
    checked.write_text(unit.replace(f"{PREFIX}/venv/bin/sensorcast", str(fake)))
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(checked)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "sensorcast.service" not in out.stderr, out.stderr
