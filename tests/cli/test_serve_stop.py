"""``hal serve --stop`` says "stopped" only once the daemon's process is gone."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest

from hal9999.cli import serve


@dataclass
class _Info:
    pid: int


class _Files:
    """A daemon's files that it lets go of as soon as it is told to stop."""

    def __init__(self, pid: int) -> None:
        self.info: _Info | None = _Info(pid)

    def running(self) -> _Info | None:
        info, self.info = self.info, None
        return info


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
