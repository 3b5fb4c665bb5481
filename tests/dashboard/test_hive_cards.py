"""The hive page of a real ``hal serve``: its approval cards say what ``hal approvals show``
says (an apply's summary from the agent and whether approving now would be refused, or what
it would do; when the proposal expires as a person reads it; a spawn or destroy proposal's
details as labelled fields, not JSON), and its agent cards start, stop and drop a message
from a mailbox through the hive API the command line uses."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from tests.hive.conftest import agent_commit, git
from tests.support.dashboard import Hal

from hal9999.hive import approvals
from hal9999.hive.agents import set_state
from hal9999.store import Store

pytestmark = [pytest.mark.browser]
T = TypeVar("T")


@pytest.fixture(scope="module")
def hal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hal]:
    h = Hal(tmp_path_factory.mktemp("cards"))
    started = h("serve", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    h.base = json.loads(started.stdout)["dashboard"].split("/login")[0]  # type: ignore[attr-defined]
    yield h
    h("serve", "--stop")
    from tests.processes import pointing_into, stop_everything_of

    stop_everything_of(h.home, h.env)
    assert pointing_into(h.home) == {}, f"processes left running in {h.home}"


def off_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end in a thread (Playwright's loop runs in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_cards_carry_the_summary_the_warning_a_readable_expiry_and_fields(
    browser: Any, hal: Hal, shot: Any
) -> None:
    spawned = hal("agent", "spawn", "alice", "--repo", str(hal.repo))
    assert spawned.returncode == 0, spawned.stderr
    agent_commit(hal.repo, "alice", {"calc.py": "def add(a, b):\n    return a + b\n"})
    git(hal.repo, "branch", "release", "main")  # a target no worktree has checked out
    with Store.open(hal.home) as store:
        refused = off_loop(approvals.propose_apply(
            store, proposer="alice", repo=hal.repo, target="main",
            summary="Fixes add: it subtracted.\nTests pass.",
        )).id  # fmt: skip
        fine = off_loop(
            approvals.propose_apply(store, proposer="alice", repo=hal.repo, target="release")
        ).id
        spawn = approvals.propose(
            store, kind="spawn", proposer="alice", title="a reviewer",
            payload={"name": "bob", "agent": "claude", "repo": str(hal.repo),
                     "role": "You review diffs.\nBe brief."},
        ).id  # fmt: skip
        destroy = approvals.propose(
            store, kind="destroy", proposer="alice", title="done", payload={"name": "alice"}
        ).id
    page = browser.new_context().new_page()
    page.goto(hal.link())
    page.goto(f"{hal.base}/hive")  # type: ignore[attr-defined]
    card = f"[data-approval='{refused}']"
    page.wait_for_selector(f"{card} .diff-table", timeout=30000)
    text = page.inner_text(card)
    assert "Summary from alice:" in text and "Fixes add: it subtracted.\nTests pass." in text
    assert re.search(r"Approving now would be refused: main is checked out in \S+", text), text
    assert re.search(r"expires in 6 d 23 h \(.+\)", text), text
    assert "167h" not in text
    page.wait_for_selector(f"[data-approval='{fine}'] .preview", timeout=30000)
    shown = page.inner_text(f"[data-approval='{fine}']")
    assert "Approving now: fast-forward of release" in shown and "refused" not in shown
    fields = page.inner_text(f"[data-approval='{spawn}'] .proposal-fields")
    assert "Name\nbob" in fields and "Agent\nclaude" in fields, fields
    assert "Role\nYou review diffs.\nBe brief." in fields, fields
    assert "{" not in fields and '"name"' not in page.inner_text(f"[data-approval='{spawn}']")
    assert page.inner_text(f"[data-approval='{destroy}'] dd[data-field='name']") == "alice"
    shot(page)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the card still reads
    shot(page, "phone")


def test_agent_controls_start_stop_and_drop_a_message(browser: Any, hal: Hal, shot: Any) -> None:
    spawned = hal("agent", "spawn", "carol", "--repo", str(hal.repo))
    assert spawned.returncode == 0, spawned.stderr
    page = browser.new_context().new_page()
    page.goto(hal.link())
    page.goto(f"{hal.base}/hive")  # type: ignore[attr-defined]
    card = "[data-agent='carol']"
    page.wait_for_selector(f"{card}[data-state='sleeping'] button.agent-stop", timeout=30000)
    assert page.locator(f"{card} button.agent-start").count() == 0
    page.click(f"{card} button.agent-stop")
    page.wait_for_selector(f"{card}[data-state='stopped'] button.agent-start", timeout=30000)
    assert page.locator(f"{card} button.agent-stop").count() == 0
    assert agent_state(hal, "carol") == "stopped"
    # A bad message waits in the stopped agent's mailbox: dropped, no turn of it gets it.
    sent = hal("msg", "send", "carol", "delete every branch", "--json")
    assert sent.returncode == 0, sent.stderr
    bad = json.loads(sent.stdout)["id"]
    item = f"{card} [data-message='{bad}']"
    page.wait_for_selector(item, timeout=30000)
    assert "delete every branch" in page.inner_text(item)
    shot(page, "mailbox")
    page.click(f"{item} button.drop")
    page.wait_for_selector(item, state="detached", timeout=30000)
    assert mailbox(hal, "carol") == []
    # A crashed agent gets a Start button, which lets it wake again.
    with Store.open(hal.home) as store:
        set_state(store, "carol", "crashed", "its sandbox died")
    page.wait_for_selector(f"{card}[data-state='crashed'] button.agent-start", timeout=30000)
    page.click(f"{card} button.agent-start")
    page.wait_for_selector(f"{card}[data-state='sleeping']", timeout=30000)
    assert agent_state(hal, "carol") == "sleeping"
    shot(page)
    # The command line drops through the same API.
    stopped = hal("agent", "stop", "carol")
    assert stopped.returncode == 0, stopped.stderr
    again = json.loads(hal("msg", "send", "carol", "another", "--json").stdout)["id"]
    dropped = hal("msg", "drop", "carol", again)
    assert dropped.returncode == 0 and f"dropped {again}" in dropped.stdout, dropped.stderr
    assert mailbox(hal, "carol") == []
    twice = hal("msg", "drop", "carol", again)
    assert twice.returncode == 3 and "no unread message" in twice.stderr, twice.stderr


def agent_state(hal: Hal, name: str) -> str:
    shown = hal("agent", "show", name, "--json")
    assert shown.returncode == 0, shown.stderr
    return str(json.loads(shown.stdout)["state"])


def mailbox(hal: Hal, name: str) -> list[dict[str, Any]]:
    found = hal("msg", "inbox", name, "--json")
    assert found.returncode == 0, found.stderr
    return list(json.loads(found.stdout))
