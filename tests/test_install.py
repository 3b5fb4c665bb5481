"""hal installs like any Python tool: the wheel ``uv build`` makes, installed into a fresh
virtual environment, runs, says what it is, and its doctor names what a wheel lacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tests.support.hal import private_env

from hal9999 import __version__
from hal9999.cli.doctor import HELPERS_FIX

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ("hal-launch", "hal-drop", "hal-noutmp")


def run(argv: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert isinstance(out, subprocess.CompletedProcess)
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built as a release would be."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH (scripts/setup.sh installs it)"
    dist = tmp_path_factory.mktemp("dist")
    out = run([uv, "build", "--wheel", "--out-dir", dist, ROOT])
    assert out.returncode == 0, out.stderr
    (built,) = dist.glob("hal9999-*.whl")
    return built


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_wheel_says_what_it_is(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = archive.read(f"hal9999-{__version__}.dist-info/METADATA").decode()
        license_text = archive.read(f"hal9999-{__version__}.dist-info/licenses/LICENSE")
    assert b"MIT License" in license_text and b"the hal9999 authors" in license_text
    assert "License-Expression: MIT" in meta
    assert "Classifier: Operating System :: POSIX :: Linux" in meta
    assert "Classifier: Programming Language :: Python :: 3.11" in meta
    assert "Requires-Python: >=3.11" in meta
    urls = [line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Project-URL")]
    assert {url.split(",")[0] for url in urls} >= {"Homepage", "Source", "Issues"}
    assert "Provides-Extra: tls" not in meta  # cryptography comes with hal (and mcp)
    assert "hal9999/py.typed" in names
    assert any(name.startswith("hal9999/dashboard/static/") for name in names)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_wheel_runs_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv is not None
    venv = tmp_path / "venv"
    out = run([uv, "venv", "--quiet", "--python", sys.executable, venv])
    assert out.returncode == 0, out.stderr
    out = run([uv, "pip", "install", "--quiet", "--python", venv / "bin" / "python", wheel])
    assert out.returncode == 0, out.stderr
    hal = venv / "bin" / "hal"
    env = private_env(tmp_path / "home", tmp_path / "config")
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])

    version = run([hal, "--version"], env=env, cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"hal, version {__version__}\n")

    doctor = run([hal, "doctor", "--json"], env=env, cwd=tmp_path)
    assert doctor.returncode in (0, 1), doctor.stderr  # 1: a required tool missing here
    checks = {check["name"]: check for check in json.loads(doctor.stdout)["checks"]}
    for name in HELPERS:
        check = checks[f"helper {name}"]
        assert (check["ok"], check["required"], check["fix"]) == (False, False, HELPERS_FIX)
        assert check["detail"].startswith("not built ("), check
    assert checks["HAL_HOME"]["ok"], checks["HAL_HOME"]
