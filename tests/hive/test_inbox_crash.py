"""``hal msg inbox`` (the operator reading the agents' mail) killed (SIGKILL) after each of its
store commits in turn: a message it marked read is one it had shown already, never one the
operator did not get to see."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from tests.hive.conftest import make_agent
from tests.hive.crash_helpers import killed

from hal9999.hive import broker
from hal9999.store import Store

# `hal msg inbox` (ARGS in `thread`) on `home`, without a daemon.
INBOX = textwrap.dedent(
    """
    import runpy
    os.environ.update(HAL_HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"), HAL_NO_DAEMON="1")
    sys.argv = ["hal", "msg", "inbox", *thread.split()]
    runpy.run_module("hal9999", run_name="__main__")
    """
)


@pytest.mark.parametrize("args", ["", "--json"])
def test_a_message_marked_read_was_shown_whatever_commit_a_kill_follows(
    tmp_path: Path, args: str
) -> None:
    for after in range(1, 10):
        home = tmp_path / f"home-{after}"
        with Store.open(home) as store:
            make_agent(store, "alice")
            sent = broker.send(store, sender="alice", recipient="operator", body="the result")
        run = killed(home, INBOX, args, after)
        with Store.open(home) as store:
            state = broker.get_message(store, sent.id).state
        if state == "read":
            assert sent.id in run.stdout and "the result" in run.stdout, after
        else:  # the next `hal msg inbox` shows it
            assert state == "sent", after
        if run.returncode == 0:
            assert state == "read"
            return
    pytest.fail("hal msg inbox did not finish within 9 commits")
