"""The canary: a secret given to a task is found nowhere it must not be."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.cli.conftest import Hal, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

CANARY = "canary-7f3a9e1c5b2d4f60-SECRET"
CRED = "cred-file-canary-91e0d2c4b7a6"


def argv_of_all_processes() -> list[bytes]:
    """Every process's command line, as ``ps`` would show it."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass
    return found


def files_containing(root: Path, needle: bytes, skip: set[Path]) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return [
        path
        for path in root.rglob("*")
        if path.is_file() and path not in skip and needle in path.read_bytes()
    ]


def test_canary_secret_is_nowhere(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    cred_source = tmp_path / "token.json"
    cred_source.write_text(CRED)
    config_dir = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999"
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(
        f'[[credentials]]\nsource = "{cred_source}"\ntarget = ".config/tool/token.json"\n'
    )
    # The agent uses the secret (and even prints it), checks the credential file, then waits
    # so the test can look at every process's argv while it runs.
    agent = (
        "sh -c '"
        'echo "token=$CANARY_TOKEN"; '
        'test "$(stat -c %a "$HOME/.config/tool/token.json")" = 600 && echo cred-mode-ok; '
        'grep -q cred-file-canary "$HOME/.config/tool/token.json" && echo cred-ok; '
        'echo "$CANARY_TOKEN" | wc -c > length.txt; '
        "sleep 2'"
    )
    env = {**hal_env, "CANARY_TOKEN": CANARY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hal9999.cli.main",
            "run",
            "--env",
            "CANARY_TOKEN",
            "--agent",
            agent,
            "use the token",
        ],
        cwd=demo_repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen_in_argv = False
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        for cmd in argv_of_all_processes():
            seen_in_argv |= CANARY.encode() in cmd or CRED.encode() in cmd
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert not seen_in_argv

    # The agent really had the secret: it printed it (masked) and measured its length.
    assert b"token=[REDACTED]" in out
    assert b"cred-mode-ok" in out and b"cred-ok" in out
    [task] = tasks_json(hal)
    session = Path(task["session_dir"])
    assert (session / "workspace" / "length.txt").read_text().strip() == str(len(CANARY) + 1)

    assert CANARY.encode() not in out + err
    home = Path(hal_env["HAL_HOME"])
    # The credential file lived in the session only while the run used it (mode 600,
    # checked by the agent above); afterwards no file under HAL_HOME holds either secret.
    assert not (session / "home" / ".config" / "tool" / "token.json").exists()
    for needle in (CANARY.encode(), CRED.encode()):
        assert files_containing(home, needle, skip=set()) == []
    for name in ("hal.db", "hal.db-wal"):
        path = home / name
        if path.exists():
            assert CANARY.encode() not in path.read_bytes()
    events = hal("task", "events", task["id"], "--json").stdout
    assert CANARY not in events and "[REDACTED]" in events
    assert "CANARY_TOKEN" in task["env_keys"]


def test_missing_forwarded_variable_is_a_clear_error(hal: Hal) -> None:
    out = hal("run", "--env", "NOT_SET_ANYWHERE_123", "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 8
    assert "NOT_SET_ANYWHERE_123 is not set" in out.stderr
    assert tasks_json(hal) == []
