"""A reminder survives the daemon: set while ``hal serve`` runs, the daemon killed with -9
before it is due, and it fires when the next daemon starts (a real subprocess daemon)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import LeftNothing
from tests.hive.conftest import local_hal, make_agent
from tests.support.hal import private_env

from hal9999.hive import broker, questions, reminders
from hal9999.hive.store import update_agent
from hal9999.store import Store

pytestmark = pytest.mark.slow


def poll(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_reminder_fires_after_the_daemon_is_killed_and_restarted(
    tmp_path: Path, left_nothing: LeftNothing
) -> None:
    home = tmp_path / "halhome"
    hal = local_hal(home, tmp_path)
    left_nothing(home, private_env(home, tmp_path / "xdg", HAL_PROVIDER="local"))

    with Store.open(home) as store:
        make_agent(store, "alice")
        # Stopped: its mail stays unread in the broker (a sleeping agent would be woken by the
        # turn loop, and a turn marks its mail read).
        update_agent(store, "alice", state="stopped")
        assert hal("serve", "--detach").returncode == 0
        try:
            # Set by another process than the daemon (as an MCP call or a hal command would).
            early = reminders.remind(store, agent="alice", text="early", in_s=0.5)
            late = reminders.remind(store, agent="alice", text="after the crash", in_s=4)
            asked = questions.ask(store, asker="alice", question="ok?", ttl_s=4)
            poll("the running daemon to fire the early one",
                 lambda: [m.ref for m in broker.inbox(store, "alice")] == [early.id])  # fmt: skip
            pid = json.loads((home / "run" / "serve.json").read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            poll("the daemon to die", lambda: not Path(f"/proc/{pid}").exists())
            time.sleep(max(0.0, late.due - time.time()) + 0.5)
            assert [m.ref for m in broker.inbox(store, "alice")] == [early.id]  # nobody fired it
            assert hal("serve", "--detach").returncode == 0
            inbox = poll("the restarted daemon to fire the late one and expire the question",
                         lambda: (lambda got: got if len(got) == 3 else None)(
                             broker.inbox(store, "alice")))  # fmt: skip
            assert {(m.kind, m.ref) for m in inbox[1:]} == {("reminder", late.id),
                                                              ("answer", asked.id)}  # fmt: skip
            assert reminders.list_reminders(store, "alice") == []
            assert questions.get(store, asked.id).state == "expired"
        finally:
            stopped = hal("serve", "--stop")
            assert stopped.returncode == 0, stopped.stderr
