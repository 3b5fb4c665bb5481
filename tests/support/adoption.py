"""Agents a restarted daemon adopts: a pausing claude replay and a slow shell agent."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from tests.support.cli import CAPTURED_CLAUDE

# Waits for the test to drop `go` into its workspace, then leaves its work and ends.
AGENT = (
    "sh -c 'echo agent-started; while [ ! -f go ]; do sleep 0.2; done; rm go; "
    "echo late > late.txt; echo agent-finished'"
)


def wait_until(check: object, what: str, timeout: float = 20) -> None:
    """Poll ``check()`` until it is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _pausing_claude(hal_env: dict[str, str], demo_repo: Path) -> None:
    """A claude preset replaying a captured run: three records, a pause until `go`, the rest."""
    _fake_claude(
        hal_env,
        demo_repo,
        "#!/bin/sh\nhead -n 3 /workspace/claude-stream.jsonl\n"
        "while [ ! -f /workspace/go ]; do sleep 0.1; done\n"
        "tail -n +4 /workspace/claude-stream.jsonl\n",
    )


def _fake_claude(hal_env: dict[str, str], demo_repo: Path, script: str) -> None:
    """The claude preset's command is ``script`` (committed with the captured run beside it,
    ``/workspace/claude-stream.jsonl``)."""
    (demo_repo / "claude-stream.jsonl").write_bytes(CAPTURED_CLAUDE.read_bytes())
    path = demo_repo / "fake-claude"
    path.write_text(script)
    path.chmod(0o755)
    subprocess.run(["git", "-C", str(demo_repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(demo_repo), "commit", "-qm", "fake claude"], check=True)
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[agents.claude]\ncommand = "/workspace/fake-claude"\n')
