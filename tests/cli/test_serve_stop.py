"""``hal serve --stop`` says "stopped" only once the daemon's process is gone, and is woken
by its exit; ``--detach`` returns soon after the daemon is up."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.support.hal import Hal

from hal9999.cli import serve


@dataclass
class _Info:
    pid: int


class _Files:
    """A daemon's files that it lets go of as soon as it is told to stop."""

    def __init__(self, pid: int) -> None:
        self.info: _Info | None = _Info(pid)

    def holder(self) -> int | None:
        info, self.info = self.info, None
        return None if info is None else info.pid


def test_stop_returns_once_the_process_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    # The two-worker suite: `serve --stop` returned 0 as the daemon let go of its files,
    # and the test's next look found its process still there, finishing its exit.
    script = "trap 'sleep 1; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
    with subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE) as daemon:
        assert daemon.stdout is not None and daemon.stdout.readline() == b"ready\n"  # trap set
        try:
            serve._stop(_Files(daemon.pid), as_json=False)  # type: ignore[arg-type]
            assert daemon.poll() is not None, "stopped said while the process still ran"
            assert f"stopped hal serve (pid {daemon.pid})" in capsys.readouterr().out
        finally:
            daemon.kill()


def test_stop_of_a_daemon_already_gone_says_stopped(capsys: pytest.CaptureFixture[str]) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    serve._stop(_Files(gone.pid), as_json=True)  # type: ignore[arg-type]
    assert '"stopped"' in capsys.readouterr().out


class _HeldFiles:
    """A daemon's files that it holds until its process has ended (a lock lets go at exit)."""

    def __init__(self, daemon: subprocess.Popen[bytes]) -> None:
        self.daemon = daemon
        self.looks = 0

    def holder(self) -> int | None:
        self.looks += 1
        return self.daemon.pid if self.daemon.poll() is None else None


def test_stop_waits_on_the_process_not_in_polls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Woken by the daemon's exit on its pidfd: no sleep between looks at its
    files, which would end the wait a poll after the exit."""
    slept: list[float] = []
    real_sleep = serve.time.sleep
    monkeypatch.setattr(serve.time, "sleep", lambda s: slept.append(s) or real_sleep(s))
    script = "trap 'sleep 0.4; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
    with subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE) as daemon:
        assert daemon.stdout is not None and daemon.stdout.readline() == b"ready\n"
        try:
            files = _HeldFiles(daemon)
            serve._stop(files, as_json=False)  # type: ignore[arg-type]
            assert daemon.poll() is not None
            assert f"stopped hal serve (pid {daemon.pid})" in capsys.readouterr().out
        finally:
            daemon.kill()
    assert slept == []
    assert files.looks <= 3  # before the signal, after the exit, the last check


class _Starting:
    """A detached daemon's files: up at the third look."""

    def __init__(self, home: Path, pid: int) -> None:
        self.paths = SimpleNamespace(home=home, ensure=lambda: None)
        self.log_file = home / "serve.log"
        self.pid = pid
        self.looks = 0

    def running(self) -> SimpleNamespace | None:
        self.looks += 1
        if self.looks < 3:
            return None
        return SimpleNamespace(pid=self.pid, socket="s", port=1, tls_port=None)


def test_detach_looks_for_the_daemon_often(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--detach`` returns at most 10 ms after the daemon is up (its looks are
    close together)."""
    from hal9999.cli import dashboard

    slept: list[float] = []
    monkeypatch.setattr(serve.time, "sleep", slept.append)
    monkeypatch.setattr(dashboard, "dashboard_link", lambda home, port: "link")
    with subprocess.Popen(["sleep", "30"]) as child:
        monkeypatch.setattr(serve.subprocess, "Popen", lambda *a, **k: child)
        try:
            files = _Starting(tmp_path, child.pid)
            serve._detach(files, as_json=False, options=[], address=None)  # type: ignore[arg-type]
        finally:
            child.kill()
    assert f"pid {child.pid}" in capsys.readouterr().out
    assert len(slept) == 2 and max(slept) <= 0.01


def test_status_json_says_down_as_up_false(hal: Hal) -> None:
    """``hal status --json`` without a daemon: ``{"up": false}`` and exit 1 (its ``up`` is
    never overwritten by the daemon's own ``running``, the list of tasks it runs:
    ``test_daemon.py`` checks the up side on an idle daemon)."""
    out = hal("status", "--json")
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout) == {"up": False}
