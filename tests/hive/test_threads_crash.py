"""A process resolving a thread killed (SIGKILL) after each of its store commits in turn:
whatever it had done, a thread is never left closed without the message that tells its
asker or proposer (which then wakes that agent like any mail), nor that message without it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.hive.conftest import make_agent
from tests.hive.crash_helpers import killed

from hal9999.hive import approvals, questions
from hal9999.store import Store

# What the actions below use besides `store` and `thread`.
IMPORTS = "from hal9999.hive import approvals, questions\n"

Setup = Callable[[Store], str]


def ask_operator(store: Store) -> str:
    return questions.ask(store, asker="alice", question="May I drop the old table?").id


def ask_briefly(store: Store) -> str:
    return questions.ask(store, asker="alice", question="port?", to="bob", ttl_s=1).id


def propose(store: Store) -> str:
    made = approvals.propose(store, kind="tool", proposer="alice", title="stop agent bob",
                             payload={"tool": "stop", "agent": "bob"})  # fmt: skip
    return made.id


CASES: dict[str, tuple[Setup, str, str, str]] = {
    # name: (setup, action, thread table, state it moves to)
    "answer": (ask_operator,
               "questions.answer(store, thread, 'yes, drop it', answerer='operator')",
               "hive_questions", "answered"),
    "expire": (ask_briefly, "import time; time.sleep(1.1); questions.expire_due(store)",
               "hive_questions", "expired"),
    "deny": (propose, "approvals.deny(store, thread, reason='not now')",
             "hive_approvals", "denied"),
    "approve": (propose, "asyncio.run(approvals.approve(store, thread))",
                "hive_approvals", "approved"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_thread_is_never_closed_without_its_message_whatever_commit_a_kill_follows(
    tmp_path: Path, case: str
) -> None:
    setup, action, table, moved = CASES[case]
    for after in range(1, 10):
        home = tmp_path / f"home-{after}"
        with Store.open(home) as store:
            make_agent(store, "alice")
            make_agent(store, "bob")
            thread = setup(store)
        run = killed(home, IMPORTS + action, thread, after)
        with Store.open(home) as store:
            [(state,)] = store._query(f"SELECT state FROM {table} WHERE id = ?", (thread,))
            told = store._query(
                "SELECT sender, kind, state FROM hive_messages WHERE recipient = 'alice'"
                " AND ref = ?",
                (thread,),
            )
        if state == moved:
            assert len(told) == 1, (after, state, told)  # alice's next turn gets it
            assert told[0]["state"] == "sent"
        else:
            assert state in ("open", "pending") and told == [], (after, state, told)
        if run.returncode == 0:
            assert state == moved
            return
    pytest.fail(f"{case} did not finish within 9 commits")


def test_a_question_is_never_left_open_without_its_target_asked_whatever_commit_a_kill_follows(
    tmp_path: Path,
) -> None:
    action = "questions.ask(store, asker='alice', question='Which port?', to='bob')"
    for after in range(1, 10):
        home = tmp_path / f"home-{after}"
        with Store.open(home) as store:
            make_agent(store, "alice")
            make_agent(store, "bob")
        run = killed(home, IMPORTS + action, "", after)
        with Store.open(home) as store:
            asked = [row["id"] for row in store._query("SELECT id FROM hive_questions")]
            put = store._query(
                "SELECT ref FROM hive_messages WHERE recipient = 'bob' AND kind = 'question'"
            )
        assert [row["ref"] for row in put] == asked, after  # bob's next turn gets it
        if run.returncode == 0:
            assert len(asked) == 1
            return
    pytest.fail("ask did not finish within 9 commits")
