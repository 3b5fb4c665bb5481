"""Fixtures for driving real agent CLIs through ``hal run`` against the scripted LLM server.

Each test gets a private HAL_HOME and config dir, a git repo with a planted bug and a failing
test, a running :class:`ScriptedLLMServer` on 127.0.0.1, and a dummy API key that reaches hal
only as the host variable named by ``api_key_env``. The sandbox has no network (the default,
``network = "none"``): the agent reaches the server only through hal's LLM gateway, which holds
the key; the agent holds a placeholder token.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.llm_server.scripts import CALC_BUG
from tests.llm_server.server import ScriptedLLMServer
from tests.support.hal import git

KEY_VAR = "E2E_LLM_API_KEY"
"""The host variable holding the dummy key; the config names it in ``api_key_env``."""


def requires_cli(name: str) -> None:
    """Skip when agent CLI ``name`` is not installed; under ``CI=true`` fail instead.

    CI installs every CLI with ``scripts/install-agents.sh``, so a missing one there is a
    broken install, not a reason to go green.
    """
    if shutil.which(name) is not None:
        return
    reason = f"{name} is not installed (sudo scripts/install-agents.sh {name})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def bug_repo(tmp_path: Path) -> Path:
    """A git repo whose test fails: ``calc.add`` subtracts."""
    repo = tmp_path / "repo"
    repo.mkdir()
    CALC_BUG.write(repo)
    (repo / ".gitignore").write_text("__pycache__/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "calc with a bug")
    return repo


@pytest.fixture
def llm_server() -> Iterator[ScriptedLLMServer]:
    """The scripted LLM server on 127.0.0.1; a test sets its Script."""
    with ScriptedLLMServer() as server:
        yield server


@pytest.fixture
def dummy_key() -> str:
    """A dummy API key, unique per test so finding it anywhere means it leaked from this run."""
    return f"sk-hal-e2e-{secrets.token_hex(12)}"


@dataclass
class HalCli:
    """Runs ``python -m hal9999`` in the bug repo with a private home and config."""

    env: dict[str, str]
    cwd: Path
    home: Path
    config_file: Path

    def configure(
        self, agent: str, *, base_url: str, model: str, extra_args: tuple[str, ...] = ()
    ) -> None:
        """Point ``agent`` at ``base_url``; the key comes from the host variable KEY_VAR."""
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            f"[agents.{agent}]\n"
            f"base_url = {json.dumps(base_url)}\n"
            f"model = {json.dumps(model)}\n"
            f"api_key_env = {json.dumps(KEY_VAR)}\n"
            f"extra_args = {json.dumps(list(extra_args))}\n"
            # The scripted model has no public price; the gateway prices it from config.
            '[gateway.prices."scripted-model"]\ninput = 1.0\noutput = 2.0\n'
        )

    def __call__(
        self, *args: str, timeout: float = 180, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``hal ARGS...``; returns the completed process (never raises on failure)."""
        return subprocess.run(
            [sys.executable, "-m", "hal9999", *args],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def hal_cli(tmp_path: Path, bug_repo: Path, dummy_key: str) -> HalCli:
    """hal with a private HAL_HOME, bwrap, no network and the dummy key in KEY_VAR."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    home = tmp_path / "halhome"
    env |= {
        "HAL_HOME": str(home),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "HAL_PROVIDER": "bwrap",
        "HAL_NETWORK": "none",
        "HAL_GATEWAY_IDLE_S": "2",
        KEY_VAR: dummy_key,
    }
    config = tmp_path / "xdg-config" / "hal9999" / "config.toml"
    return HalCli(env=env, cwd=bug_repo, home=home, config_file=config)


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle`` (the database included)."""
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]
