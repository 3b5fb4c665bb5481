"""The secret sweep (stop 52): an agent that leaks every value it holds in every way it can,
run for real (bwrap, the LLM gateway), and every place the host keeps or shows searched for
each secret in each form hal promises to mask (docs/security.md, section 10, "The sweep")."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.cli.conftest import Hal, tasks_json
from tests.cli.sweep_helpers import (
    LEAKY_CLAUDE,
    files_holding,
    found_in,
    host_processes,
    outside,
    repo_text,
)

from hal9999.gateway.channel import GatewayPaths, gateway_pid

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(240)]

SECRET = 'sweep-Secret"7f/3a+9e c5'
"""A ``--secret``: a quote, a slash, a plus and a space, so its JSON-escaped, percent-encoded
and base64 forms all differ from it."""
FORWARDED = "sweep-fwd-key-41d2b8e06a"
"""Forwarded with ``--env MY_API_KEY`` (a secret by its name)."""
REAL_KEY = "sk-ant-api03-sweepRealKey5c0e9a71"
"""The claude preset's ``api_key_env``: stays on the host, the agent gets a placeholder."""
CRED = "sweep-cred-token-b3f9e21c77"
"""A credential file's token."""
UNRELATED = "sweep-shell-token-0a6e4d92"
"""A token of the user's shell that no task is given."""
CAP = 256 * 1024


def _configure(hal_env: dict[str, str], repo: Path, tmp_path: Path) -> None:
    (repo / "fake-claude").write_text(LEAKY_CLAUDE)
    (repo / "fake-claude").chmod(0o755)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "fake claude"], check=True)
    (tmp_path / "token.json").write_text(CRED)
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        '[agents.claude]\ncommand = "/workspace/fake-claude"\n'
        f'[[credentials]]\nsource = "{tmp_path / "token.json"}"\n'
        'target = ".config/tool/token.json"\n'
    )


def _run_watched(
    hal_env: dict[str, str], repo: Path, extra: dict[str, str]
) -> tuple[subprocess.CompletedProcess[bytes], set[str], set[str]]:
    """``hal run`` of the leaky agent; while it runs, which secrets any process showed in its
    command line, and which a process outside the run's own tree held in its environment."""
    env = {
        **hal_env, "LEAK_SECRET": SECRET, "MY_API_KEY": FORWARDED, "ANTHROPIC_API_KEY": REAL_KEY,
        "UNRELATED_TOKEN": UNRELATED, "HAL_LOG_CAP_MB": str(CAP / 2**20),
        "HAL_GATEWAY_IDLE_S": "600", **extra,
    }  # fmt: skip
    more = [arg for name in extra for arg in ("--env", name)]
    argv = [sys.executable, "-m", "hal9999", "run", "--secret", "LEAK_SECRET", "--env",
            "MY_API_KEY", *more, "--agent", "claude", "leak everything"]  # fmt: skip
    everything = [SECRET, FORWARDED, REAL_KEY, CRED, UNRELATED]
    in_argv: set[str] = set()
    in_environ: set[str] = set()
    # Files, not pipes: the agent prints past the log cap, and a pipe nobody reads blocks it.
    out, err = (repo.parent / f"{repo.name}.{name}" for name in ("out", "err"))
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(argv, cwd=repo, env=env, stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        procs = host_processes()
        for pid in outside(proc.pid, procs) - {os.getpid()}:
            if hits := found_in(procs[pid][2], everything):
                in_environ.update(f"{hit} in {procs[pid][1][:200]!r}" for hit in hits)
        for _, cmdline, _ in procs.values():
            in_argv.update(found_in(cmdline, everything))
        time.sleep(0.02)
    proc.wait(timeout=30)
    done = subprocess.CompletedProcess(argv, proc.returncode, out.read_bytes(), err.read_bytes())
    return done, in_argv, in_environ


def _stop_gateway(home: Path) -> None:
    pid = asyncio.run(gateway_pid(GatewayPaths(home)))
    if pid is not None:
        os.kill(pid, signal.SIGTERM)


def test_a_leaking_agent_leaves_no_secret_anywhere_on_the_host(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    _configure(hal_env, demo_repo, tmp_path)
    home = Path(hal_env["HAL_HOME"])
    try:
        done, in_argv, in_environ = _run_watched(hal_env, demo_repo, {"LEAK_CAP": str(CAP)})
        environ = host_processes()
        gateway = asyncio.run(gateway_pid(GatewayPaths(home)))
        assert gateway is not None and gateway in environ, "the run went through the gateway"
        gateway_env = environ[gateway][2]
        refused, _, _ = _run_watched(hal_env, demo_repo, {"LEAK_COMMIT": "1"})
    finally:
        _stop_gateway(home)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    first, second = sorted(tasks_json(hal), key=lambda task: task["created_at"])
    token = (Path(first["session_dir"]) / "run" / "gateway.json").read_text()
    placeholder = token.split('"token": "')[1].split('"')[0]
    secrets = [SECRET, FORWARDED, REAL_KEY, CRED, placeholder]

    # The agent really held each (its output shows them masked, never plain).
    assert done.stdout.count(b"[REDACTED]") > 40
    assert found_in(done.stdout + done.stderr, [*secrets, UNRELATED]) == []
    # No command line, and no process outside the run's own tree (the gateway, a VM, a
    # tmux server, a keeper), showed one; the gateway's environment holds none.
    assert in_argv == set() and in_environ == set()
    assert found_in(gateway_env, [*secrets, UNRELATED]) == []

    # Every file under HAL_HOME: the agent's own workspace and home aside (its checkout and
    # branches; the refused result kept for the user), only the run's gateway.json holds
    # its placeholder, and nothing another user could read holds anything.
    held = files_holding(home, secrets)
    for task in (first, second):
        prefix = str(Path(task["session_dir"]).relative_to(home)) + "/"
        for name in [n for n in held if n.startswith((prefix + "workspace/", prefix + "home/"))]:
            del held[name]
    assert held.pop(f"sessions/{first['id']}/run/gateway.json") == [placeholder]
    assert held.pop(f"sessions/{second['id']}/run/gateway.json", [placeholder]) != []
    kept = {f"sessions/{second['id']}/{name}" for name in ("result.patch", "result.bundle")}
    assert set(held) <= kept, held
    assert (home.stat().st_mode & 0o077) == 0 and (home / "sessions").stat().st_mode & 0o077 == 0
    for name in kept & set(held):
        assert (home / name).stat().st_mode & 0o077 == 0

    # The events and logs hal shows, and the user's repository: every object, ref and reflog.
    for args in (("task", "events", "--json"), ("task", "logs"), ("task", "show", "--json")):
        for task in (first, second):
            shown = hal(*args[:2], task["id"], *args[2:], timeout=60)
            assert shown.returncode == 0, shown.stderr
            assert found_in(shown.stdout.encode(), secrets) == [], args
    assert first["status"] == "succeeded" and first["branch"]
    assert second["status"] != "succeeded" and b"secret" in refused.stderr + refused.stdout
    assert found_in(repo_text(demo_repo), [*secrets, UNRELATED]) == []
