"""The ssh provider's tmux session (``session.START``), run on this host: what the status line
of whoever attaches shows of the agent."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from tests.support.process import SETS_TITLE, TITLE, _pane_title, _status_line

from hal9999.providers.ssh import session

pytestmark = pytest.mark.tmux


def test_the_agents_pane_title_never_reaches_the_status_line_on_an_ssh_host(
    tmp_path: Path,
) -> None:
    # The host's tmux shows the pane's title in its status line by default, and the agent
    # sets it (OSC 2): `hal task attach` on an ssh host read "hal: run succeeded" there.
    run = tmp_path / "r"
    argv = ["sh", "-c", session.START, "hal-session", str(run), session.PANE,
            "sh", "-c", SETS_TITLE]  # fmt: skip
    started = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socket = run / "sock"
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            socket.exists() and TITLE in _pane_title(socket)
        ):
            time.sleep(0.05)
        assert TITLE in _pane_title(socket)  # the agent did set it
        assert TITLE not in _status_line(socket, "hal")
    finally:
        subprocess.run(["tmux", "-S", str(socket), "kill-server"], check=False,
                       capture_output=True)  # fmt: skip
        started.wait(20)
