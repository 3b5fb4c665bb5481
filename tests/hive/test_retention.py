"""Retention beyond messages, events and turns: closed threads go, pending ones never; the
mailbox ledgers lose the bodies of old taken entries (never an untaken one, never a line
appended meanwhile); the daemon's job runs again and again; ``hal vacuum`` shows it all."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from hal9999.hive import approvals, questions, reminders
from hal9999.hive.agents import AgentDir
from hal9999.hive.broker import OPERATOR, inbox, mark, send
from hal9999.hive.retention import DAY_S, vacuum, vacuum_forever
from hal9999.hive.store import AgentRecord, insert_agent
from hal9999.hivesettings import HiveSettings
from hal9999.store import Store

NONE_LEFT = {"messages": 0, "events": 0, "turns": 0, "approvals": 0, "questions": 0,
             "reminders": 0}  # fmt: skip


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    with Store.open(home) as opened:
        now = time.time()
        for name in ("alice", "bob"):
            insert_agent(opened, AgentRecord(name=name, agent="custom", provider="local",
                                             created_at=now, updated_at=now))  # fmt: skip
            AgentDir.of(home, name).root.mkdir(parents=True, exist_ok=True)
        yield opened


def age(store: Store, table: str, days: float, *columns: str) -> None:
    with store._write() as conn:
        for column in columns:
            conn.execute(f"UPDATE {table} SET {column} = {column} - ?", (days * DAY_S,))


def test_closed_threads_go_after_their_age_and_pending_ones_never(store: Store) -> None:
    kept = approvals.propose(store, kind="tool", proposer="alice", title="pending", payload={})
    denied = approvals.propose(store, kind="tool", proposer="alice", title="denied", payload={})
    approvals.deny(store, denied.id, reason="no")
    open_q = questions.ask(store, asker="alice", question="still open?")
    answered = questions.ask(store, asker="alice", question="answered?")
    questions.answer(store, answered.id, "yes", answerer=OPERATOR)
    due = reminders.remind(store, agent="alice", text="due", in_s=1)
    later = reminders.remind(store, agent="alice", text="not yet", in_s=3600)
    assert [r.id for r in reminders.fire_due(store, now=time.time() + 2)] == [due.id]
    age(store, "hive_approvals", 31, "created", "resolved", "expires")
    age(store, "hive_questions", 31, "created", "answered")
    age(store, "hive_reminders", 31, "created", "delivered")  # `later` keeps its due time

    settings = HiveSettings()
    planned = vacuum(store, settings, dry_run=True)
    assert {k: planned[k] for k in ("approvals", "questions", "reminders")} == {
        "approvals": 1, "questions": 1, "reminders": 1}  # fmt: skip
    assert approvals.get(store, denied.id).state == "denied", "a dry run removes nothing"
    assert vacuum(store, settings) == planned
    assert [a.id for a in approvals.list_approvals(store, state=None)] == [kept.id]
    assert [q.id for q in questions.list_questions(store, open_only=False)] == [open_q.id]
    assert [r.id for r in reminders.list_reminders(store, pending_only=False)] == [later.id]
    # Young closed threads stay until their own age.
    assert vacuum(store, HiveSettings(keep_threads_days=40)) == NONE_LEFT


def test_ledgers_lose_old_taken_bodies_only(store: Store, home: Path) -> None:
    paths = AgentDir.of(home, "alice")
    sent = [send(store, sender=OPERATOR, recipient="alice", body=f"secret {n}") for n in range(3)]
    paths.append(inbox(store, "alice"))
    paths.set_cursor(2)  # turns took the first two; the third waits for the next turn
    mark(store, [m.id for m in sent[:2]], "read")
    age(store, "hive_messages", 31, "created")
    old = [{**e, "created": e["created"] - 31 * DAY_S} for e in paths.entries()]
    paths.mailbox.write_text("".join(json.dumps(e) + "\n" for e in old) + '{"torn": \n')
    paths.set_cursor(2)

    settings = HiveSettings()
    assert vacuum(store, settings, home=home, dry_run=True)["ledger_bodies"] == 2
    assert "secret 0" in paths.mailbox.read_text()
    counts = vacuum(store, settings, home=home)
    assert counts["ledger_bodies"] == 2 and counts["messages"] == 2
    text = paths.mailbox.read_text()
    assert "secret 0" not in text and "secret 1" not in text
    # The cursor still points past the taken entries: the next turn gets exactly the third.
    assert [e["id"] for e in paths.entries()] == [m.id for m in sent]
    assert [e["body"] for e in paths.pending()] == ["secret 2"]
    # The ledger still dedupes a redelivery of a scrubbed message.
    assert paths.append([sent[0]]) == []
    assert vacuum(store, settings, home=home)["ledger_bodies"] == 0


def test_a_scrub_waits_for_an_append_in_progress(store: Store, home: Path) -> None:
    paths = AgentDir.of(home, "bob")
    first = send(store, sender=OPERATOR, recipient="bob", body="old body")
    paths.append([first])
    paths.set_cursor(1)
    stale = [{**e, "created": e["created"] - 31 * DAY_S} for e in paths.entries()]
    paths.mailbox.write_text("".join(json.dumps(e) + "\n" for e in stale))
    late = send(store, sender=OPERATOR, recipient="bob", body="appended meanwhile")
    done: list[int] = []
    with paths.locked():  # an append holds the ledger
        scrub = threading.Thread(target=lambda: done.append(paths.scrub(time.time())))
        scrub.start()
        time.sleep(0.3)
        assert scrub.is_alive() and not done, "the scrub waits for the lock"
        with paths.mailbox.open("a") as handle:  # what the append writes under the lock
            handle.write(late.model_dump_json(exclude={"state"}) + "\n")
    scrub.join(10)
    assert done == [1]
    assert [e.get("body") for e in paths.entries()] == [None, "appended meanwhile"]


async def test_the_daemons_job_vacuums_again_and_again(store: Store, home: Path) -> None:
    job = asyncio.create_task(vacuum_forever(store, HiveSettings(vacuum_interval_s=0.2), home))
    try:
        for n in range(2):  # a removal after the first pass proves the job repeats
            message = send(store, sender=OPERATOR, recipient="alice", body=f"old {n}")
            mark(store, [message.id], "read")
            age(store, "hive_messages", 31, "created")
            deadline = time.monotonic() + 10
            while inbox(store, "alice", include_read=True):
                assert time.monotonic() < deadline, "the periodic job did not remove it"
                await asyncio.sleep(0.05)
    finally:
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job


def test_hal_vacuum_reports_every_kind(
    store: Store, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hal9999.cli.main import cli

    denied = approvals.propose(store, kind="tool", proposer="alice", title="denied", payload={})
    approvals.deny(store, denied.id, reason="no")
    age(store, "hive_approvals", 31, "created", "resolved", "expires")
    monkeypatch.setenv("HAL_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    out = CliRunner().invoke(cli, ["vacuum", "--dry-run", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["dry_run"] is True and data["approvals"] == 1 and data["ledger_bodies"] == 0
    out = CliRunner().invoke(cli, ["vacuum"])
    assert out.exit_code == 0, out.output
    assert "1 resolved proposal(s)" in out.output
    assert approvals.list_approvals(store, state=None) == []
