"""Reminders: delivered to the agent's mailbox when due, once; a file named from inside the
sandbox written safely into the agent's own directory (hostile symlinks never followed); the
deadline loop wakes for a new reminder without waiting for its poll."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest
from tests.hive.conftest import hive_events

from hal9999.errors import UsageError
from hal9999.hive import broker, reminders
from hal9999.hive.deadlines import DeadlineLoop
from hal9999.store import Store


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The agent's directory on the host, seen inside its sandbox as /workspace."""
    path = tmp_path / "agents" / "alice" / "workspace"
    path.mkdir(parents=True)
    return path


def test_a_reminder_reaches_the_mailbox_when_due_and_only_once(store: Store) -> None:
    set_ = reminders.remind(store, agent="alice", text="check the CI run", in_s=60)
    assert reminders.fire_due(store, now=time.time() + 30) == []
    assert broker.inbox(store, "alice") == []
    [fired] = reminders.fire_due(store, now=time.time() + 61)
    assert fired.id == set_.id and fired.state == "delivered"
    [message] = broker.inbox(store, "alice")
    assert (message.kind, message.sender, message.ref) == ("reminder", "hal", set_.id)
    assert "check the CI run" in message.body
    assert reminders.fire_due(store, now=time.time() + 120) == []
    assert reminders.list_reminders(store, "alice") == []
    assert [e["type"] for e in hive_events(store)] == ["reminder_set", "reminder_due"]


def test_a_daemon_killed_between_the_notice_and_the_mark_does_not_repeat_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notice is committed before the reminder is marked delivered (a crash never loses
    it); a daemon killed in between left the notice, and the next one marks the reminder
    without sending it again (tests/hive/test_reminders_daemon.py kills one right there)."""
    set_ = reminders.remind(store, agent="alice", text="check the CI run", in_s=1)

    def killed(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed")  # the daemon dies after the notice's commit

    with monkeypatch.context() as patch:
        patch.setattr(reminders, "hive_write", killed)
        with pytest.raises(SystemExit):
            reminders.fire_due(store, now=time.time() + 2)
    assert [m.ref for m in broker.inbox(store, "alice")] == [set_.id]
    assert [r.id for r in reminders.list_reminders(store, "alice")] == [set_.id]  # pending
    [fired] = reminders.fire_due(store, now=time.time() + 2)  # the next daemon
    assert fired.id == set_.id and fired.state == "delivered"
    assert [m.ref for m in broker.inbox(store, "alice")] == [set_.id]  # once
    assert reminders.list_reminders(store, "alice") == []


def test_a_file_named_inside_the_sandbox_is_written_in_the_agents_directory(
    store: Store, workspace: Path
) -> None:
    mounts = [("/workspace", workspace)]
    set_ = reminders.remind(store, agent="alice", text="resume the migration at step 3",
                            in_s=1, file="/workspace/notes/todo.md", mounts=mounts)  # fmt: skip
    assert (set_.file_root, set_.file_rel) == (str(workspace), "notes/todo.md")
    reminders.fire_due(store, now=time.time() + 2)
    assert (workspace / "notes" / "todo.md").read_text() == "resume the migration at step 3"
    [message] = broker.inbox(store, "alice")
    assert "/workspace/notes/todo.md" in message.body and "step 3" not in message.body
    relative = reminders.remind(store, agent="alice", text="x", in_s=1, file="later.txt",
                                mounts=mounts)  # fmt: skip
    assert relative.file_rel == "later.txt"


@pytest.mark.parametrize(
    "path", ["/workspace/../etc/passwd", "../x", "/etc/cron.d/x", "/workspace", "", "a\x00b"]
)
def test_a_file_outside_the_workspace_is_refused_when_set(
    store: Store, workspace: Path, path: str
) -> None:
    with pytest.raises(UsageError):
        reminders.remind(store, agent="alice", text="x", in_s=1, file=path,
                         mounts=[("/workspace", workspace)])  # fmt: skip
    assert reminders.list_reminders(store) == []


def test_a_planted_symlink_is_replaced_never_written_through(
    store: Store, workspace: Path, tmp_path: Path
) -> None:
    host_file = tmp_path / "host-secret"
    host_file.write_text("host content\n")
    reminders.remind(store, agent="alice", text="pwned", in_s=1, file="/workspace/note",
                     mounts=[("/workspace", workspace)])  # fmt: skip
    # The agent plants a link at the name after setting the reminder.
    (workspace / "note").symlink_to(host_file)
    reminders.fire_due(store, now=time.time() + 2)
    assert host_file.read_text() == "host content\n"
    assert not (workspace / "note").is_symlink()
    assert (workspace / "note").read_text() == "pwned"


def test_a_symlinked_directory_on_the_path_is_refused_and_the_text_delivered(
    store: Store, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "host-dir"
    outside.mkdir()
    mounts = [("/workspace", workspace)]
    reminders.remind(store, agent="alice", text="the plan: rebase, then test", in_s=1,
                     file="/workspace/notes/plan.md", mounts=mounts)  # fmt: skip
    (workspace / "notes").symlink_to(outside)
    [fired] = reminders.fire_due(store, now=time.time() + 2)
    assert os.listdir(outside) == []
    assert fired.note is not None and "symlink" in fired.note
    [message] = broker.inbox(store, "alice")
    assert "the plan: rebase, then test" in message.body and "did not write it" in message.body


def test_bad_times_and_too_many_reminders_are_refused(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError, match="either at or in"):
        reminders.remind(store, agent="alice", text="x")
    with pytest.raises(UsageError, match="either at or in"):
        reminders.remind(store, agent="alice", text="x", at=time.time() + 5, in_s=5)
    with pytest.raises(UsageError, match="in the past"):
        reminders.remind(store, agent="alice", text="x", at=time.time() - 3600)
    with pytest.raises(UsageError, match="in the past"):
        reminders.remind(store, agent="alice", text="x", in_s=float("nan"))
    with pytest.raises(UsageError, match="a year ahead"):
        reminders.remind(store, agent="alice", text="x", in_s=400 * 86400)
    with pytest.raises(UsageError, match="for agents"):
        reminders.remind(store, agent="operator", text="x", in_s=5)
    with pytest.raises(UsageError, match="a reminder file needs"):
        reminders.remind(store, agent="alice", text="x", in_s=5, file="a.txt")
    monkeypatch.setattr(reminders, "MAX_PENDING", 2)
    reminders.remind(store, agent="alice", text="1", in_s=5)
    reminders.remind(store, agent="alice", text="2", in_s=5)
    with pytest.raises(UsageError, match="already has 2 pending reminders"):
        reminders.remind(store, agent="alice", text="3", in_s=5)
    reminders.remind(store, agent="bob", text="bob's own", in_s=5)


async def test_the_deadline_loop_wakes_for_a_new_reminder(store: Store) -> None:
    loop = DeadlineLoop(store, poll_s=3600)  # only a wake-up can make it fire in time
    runner = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(0.2)  # asleep now, for up to an hour
        started = time.monotonic()
        await asyncio.to_thread(reminders.remind, store, agent="alice", text="ping", in_s=0.3)
        deadline = started + 120  # generous: without the wake-up it would take an hour
        while loop.swept < 1:
            assert time.monotonic() < deadline, "the reminder did not fire"
            await asyncio.sleep(0.05)
        assert time.monotonic() - started >= 0.3
        assert [m.kind for m in broker.inbox(store, "alice")] == ["reminder"]
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
