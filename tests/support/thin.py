"""Running ``hal`` as a subprocess to compare the thin (click-free) path with the full one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.cli import IMPORTED

HEAVY = {"click", "pydantic", "pydantic_core"}


FULL = {"HAL_LOG_LEVEL": "WARNING"}
"""A variable only the full config reads: it sends ``hal`` down the full path."""


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAL_", "XDG_"))}
    env.update(HAL_HOME=str(home), HOME=str(home.parent / "user"), HAL_PROVIDER="bwrap")
    return env | extra


def _hal(home: Path, *args: str, **extra: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """A real ``hal ARGS`` and every module it imported."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, *args], env=_env(home, **extra), cwd=home.parent / "here",
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    *said, modules = done.stderr.splitlines()
    done.stderr = "\n".join(said)
    return done, {name.split(".")[0] for name in json.loads(modules)}


def _plain(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """A real ``hal ARGS``, its status as it exits."""
    return subprocess.run(
        [sys.executable, "-m", "hal9999", *args], env=_env(home, **extra),
        cwd=home.parent / "here", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
