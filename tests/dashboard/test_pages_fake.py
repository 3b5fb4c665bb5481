"""The pages in chromium against a stand-in API: login, hostile data stays inert, live
events, the phone layout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from tests.dashboard.conftest import Served
from tests.dashboard.fake_api import task
from tests.support.dashboard import FAKE_NOTIFICATION, HOSTILE, open_logged_in, quiet

from hal9999.dashboard.auth import login_url

pytestmark = pytest.mark.browser

Dashboard = tuple[Served, Any, Path]


def live_task_page(browser: Any, fake_dashboard: Dashboard) -> tuple[Any, Any]:
    """(page, fake api): the page of a running task t1, its event stream live."""
    served, api, home = fake_dashboard
    api.add_task(task("t1"))
    page = open_logged_in(browser, served, home)
    page.goto(served.base + "/tasks/t1")
    page.wait_for_selector("#live-state[data-state='live']")
    return page, api


def test_login_link_opens_the_overview(browser: Any, fake_dashboard: Dashboard, shot: Any) -> None:
    served, api, home = fake_dashboard
    api.add_task(task("t1", status="succeeded", prompt="make it faster"))
    page = browser.new_context().new_page()
    page.goto(served.base + "/")  # the shell holds nothing: without a session, no data
    page.wait_for_selector("#main :text('Logged out')")
    page.goto(login_url(home, served.base))
    assert page.url == served.base + "/"  # the token left the address bar
    page.wait_for_selector("tr[data-task='t1']")
    assert "make it faster" in page.inner_text("#tasks")
    shot(page)


def test_hostile_agent_data_never_runs(browser: Any, fake_dashboard: Dashboard, shot: Any) -> None:
    served, api, home = fake_dashboard
    evil = "\n".join(HOSTILE)
    api.add_task(task("t1", prompt=evil, repo=evil, error_message=evil))
    page = open_logged_in(browser, served, home)
    page.wait_for_selector("tr[data-task='t1']")
    page.goto(served.base + "/tasks/t1")
    page.wait_for_selector("#live-state[data-state='live']")
    for payload in HOSTILE:
        api.emit(task_id="t1", type="output", text=payload + "\n")
        api.emit(task_id="t1", type="agent_text", text=payload)
    name = "<img src=x onerror=window.__pwned='file'>.py"
    edit = {"file_path": name, "old_string": HOSTILE[0], "new_string": HOSTILE[1]}
    api.emit(task_id="t1", type="tool_call", name="Edit", input=edit)
    api.emit(task_id="t1", type="tool_call", name="Bash", input={"command": HOSTILE[2]})
    api.emit(task_id="t1", type="tool_result", output=HOSTILE[3])
    api.emit(task_id="t1", type="message", level="warning", text=HOSTILE[1])
    page.wait_for_selector("#timeline li:nth-child(9)", timeout=10000)
    time.sleep(0.5)  # give any planted handler the chance to fire
    assert page.evaluate("window.__pwned") is None
    assert getattr(page, "dialogs", []) == []
    # The payloads are on the page as text, not as elements.
    assert page.locator("#log").inner_text().count("<script>") == 1
    assert page.locator("#main script, #main img, #main svg, #main iframe").count() == 0
    hrefs = page.eval_on_selector_all("#main a", "as => as.map(a => a.getAttribute('href'))")
    assert all(not h.lower().startswith("javascript") for h in hrefs)
    assert name in page.inner_text("#timeline")
    shot(page)
    page.goto(served.base + "/")
    page.wait_for_selector("tr[data-task='t1']")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#main script, #main img, #main svg").count() == 0


def test_overview_at_phone_width(browser: Any, fake_dashboard: Dashboard, shot: Any) -> None:
    served, api, home = fake_dashboard
    for n in range(6):
        api.add_task(task(f"t{n}", status=["running", "queued", "failed"][n % 3],
                          prompt="a long prompt that goes on " * 5))  # fmt: skip
    page = open_logged_in(browser, served, home, viewport={"width": 390, "height": 844})
    page.wait_for_selector("tr[data-task='t5']")
    # Nothing wider than the screen: no sideways scrolling of the page itself.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator("th.wide").first.is_hidden()
    link = page.locator("tr[data-task='t0'] a")
    box = link.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390
    shot(page)
    page.goto(served.base + "/tasks/t0")
    page.wait_for_selector("#cancel")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "task")


def test_live_events_update_the_overview_and_the_title(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    served, api, home = fake_dashboard
    api.add_task(task("t1", status="running"))
    page = open_logged_in(browser, served, home)
    page.wait_for_selector("tr[data-task='t1'] .badge-running")
    page.wait_for_selector("#live-state[data-state='live']")
    api.tasks["t1"]["status"] = "succeeded"
    api.emit(task_id="t1", type="task_end", status="succeeded")
    page.wait_for_selector("tr[data-task='t1'] .badge-succeeded", timeout=5000)
    shot(page)


def test_notifications_are_opt_in_and_come_when_a_task_ends(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    served, api, home = fake_dashboard
    api.add_task(task("t1", status="running"))
    context = browser.new_context()
    context.add_init_script(FAKE_NOTIFICATION)
    page = context.new_page()
    page.goto(login_url(home, served.base))
    page.wait_for_selector("#live-state[data-state='live']")
    api.tasks["t1"]["status"] = "failed"
    api.emit(task_id="t1", type="task_end", status="failed")
    page.wait_for_selector("tr[data-task='t1'] .badge-failed")  # the event was handled
    assert page.evaluate("window.__notes") == []  # not asked for: none
    page.click("#notify")
    page.wait_for_selector("#notify:has-text('Notifications on')")
    api.emit(task_id="t1", type="task_end", status="succeeded", error=None)
    page.wait_for_function("() => window.__notes.length > 0", timeout=5000)
    assert page.evaluate("window.__notes")[0][0] == "Task t1 succeeded"
    shot(page)


def test_the_pool_page_shows_warm_sandboxes_a_provider_keeps(
    browser: Any, fake_dashboard: Dashboard
) -> None:
    served, api, home = fake_dashboard
    api.own_warm = {"kubernetes": {"free": 2}, "morph": {"error": "<b>unreachable</b>"}}
    page = open_logged_in(browser, served, home)
    page.goto(served.base + "/sandboxes")
    page.wait_for_selector("#pool-summary p")
    shown = page.inner_text("#pool-summary")
    assert "kubernetes 2 free warm, kept by the provider" in shown
    assert "morph warm sandboxes unknown: <b>unreachable</b>" in shown  # text, not markup
    assert "The pool is empty." not in shown


TROJAN = 'if access_level != "user\u202e \u2066// Check if admin\u2069 \u2066":'
"""A line whose bidi controls make it read as a comparison with "user" and a comment
(CVE-2021-42574, "Trojan Source"); it really compares with the rest of the line."""
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_bidi_controls_in_agent_text_are_shown_not_obeyed(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    served, api, home = fake_dashboard
    api.add_task(task("t1", prompt=TROJAN, error_message="oops\u202e"))
    page = open_logged_in(browser, served, home)
    page.goto(served.base + "/tasks/t1")
    page.wait_for_selector("#live-state[data-state='live']")
    edit = {"file_path": "auth\u202egnp.py", "old_string": "x", "new_string": TROJAN}
    api.emit(task_id="t1", type="tool_call", name="Edit", input=edit)
    api.emit(task_id="t1", type="output", text="\x1b[31m" + TROJAN + "\x1b[0m\n")
    api.emit(task_id="t1", type="agent_text", text=TROJAN)
    page.wait_for_selector("#timeline li:nth-child(2)", timeout=10000)
    shown = page.inner_text("#main")
    assert not any(c in shown for c in BIDI_CONTROLS)
    spelled = 'if access_level != "user\u27e8U+202E\u27e9 \u27e8U+2066\u27e9// Check if admin'
    assert spelled in page.inner_text("#log")
    assert spelled in page.inner_text("#timeline .diff")
    assert spelled in page.inner_text("#task-prompt")
    assert "auth\u27e8U+202E\u27e9gnp.py" in page.inner_text("#timeline .file-name")
    shot(page)
    page.goto(served.base + "/")
    page.wait_for_selector("tr[data-task='t1']")
    assert not any(c in page.inner_text("#tasks") for c in BIDI_CONTROLS)


def test_a_flood_of_output_and_a_huge_file_keep_the_page_bounded(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    page, api = live_task_page(browser, fake_dashboard)
    content = "\n".join(f"line {n}" for n in range(8_000))
    api.emit(
        task_id="t1",
        type="tool_call",
        name="Write",
        input={"file_path": "big.txt", "content": content},
    )
    chunk = ("y" * 99 + "\n") * 100  # 10,000 characters an event, 3 MB in all
    for _ in range(300):
        api.emit(task_id="t1", type="output", text=chunk)
    api.emit(task_id="t1", type="output", text="THE END\n")
    page.wait_for_function(
        "() => document.getElementById('log').textContent.endsWith('THE END\\n')",
        timeout=60000,
        polling=250,
    )
    assert page.evaluate("document.getElementById('log').textContent.length") <= 1 << 20
    assert page.is_visible("#log-cut")  # says the start is cut, and where to read it all
    assert page.locator("#timeline .diff-table tr").count() <= 5000
    assert "`hal task diff` has all of them" in page.inner_text("#timeline .diff-cut")
    assert page.evaluate("1 + 1") == 2  # still answering
    page.evaluate("document.querySelectorAll('#timeline details').forEach(d => d.open = false)")
    shot(page)  # (with 5000 rows open, a full-page screenshot takes seconds)


def evil_server(html: str, cookie: str | None = None) -> Served:
    """Another web server on 127.0.0.1 (another port), serving one page for every path."""
    from starlette.responses import HTMLResponse

    async def evil(scope: Any, receive: Any, send: Any) -> None:
        answer = HTMLResponse(html)
        if cookie is not None:
            answer.headers.append("set-cookie", cookie)
        await answer(scope, receive, send)

    return Served(evil)


def test_a_page_on_another_local_port_cannot_use_the_session(
    browser: Any, fake_dashboard: Dashboard
) -> None:
    """A page served on another port of 127.0.0.1 is "same-site". A GET that changes state
    (the inbox marks what it shows read) or that leaks by its size or timing must not be
    answered for it."""
    served, api, home = fake_dashboard
    target = served.base + "/api/hive/inbox?all=1&mark=1"
    other = evil_server(
        f'<!doctype html><img id="a" src="{target}"><link rel="stylesheet" href="{target}">'
        f'<script>fetch("{target}", {{mode: "no-cors", credentials: "include"}})'
        '.finally(() => { document.title = "done"; });</script>'
    )
    try:
        page = open_logged_in(browser, served, home)
        page.wait_for_selector("#live-state[data-state='live']")
        before = len(api.calls)
        page.goto(other.base + "/")
        page.wait_for_function("document.title === 'done'")
        page.wait_for_load_state("load")
        assert [c for c in api.calls[before:] if "inbox" in c[1]] == []
        page.goto(served.base + "/hive")  # the dashboard's own pages still read it
        page.wait_for_selector("#messages li")
        assert any("inbox" in c[1] for c in api.calls[before:])
    finally:
        other.close()


def test_a_junk_session_cookie_from_another_port_does_not_log_the_operator_out(
    browser: Any, fake_dashboard: Dashboard
) -> None:
    """Cookies ignore the port: a page on another port of 127.0.0.1 can set one for the
    dashboard's host (a red team logged the operator out with
    ``Set-Cookie: hal_session=junk``). The dashboard holds no cookie to overwrite."""
    served, api, home = fake_dashboard
    api.add_task(task("t1"))
    other = evil_server("<!doctype html><title>set</title>", "hal_session=junk; Path=/")
    try:
        page = open_logged_in(browser, served, home)
        page.wait_for_selector("tr[data-task='t1']")
        assert page.context.cookies() == []  # logging in set none
        page.goto(other.base + "/")
        junk = page.context.cookies()
        assert [(c["name"], c["value"], c["domain"]) for c in junk] == [
            ("hal_session", "junk", "127.0.0.1")
        ]  # the browser took it, for every port of the host
        page.goto(served.base + "/tasks/t1")
        page.wait_for_selector("#live-state[data-state='live']")
        page.wait_for_selector("#task-status .badge-running")
        page.goto(served.base + "/")
        page.wait_for_selector("tr[data-task='t1']")
        assert page.locator("#main :text('Logged out')").count() == 0
        assert page.evaluate("hal.api('GET', '/tasks').then((tasks) => tasks.length)") == 1
    finally:
        other.close()


def test_every_tab_of_the_origin_shares_the_session_and_a_new_login_replaces_it(
    browser: Any, fake_dashboard: Dashboard
) -> None:
    served, api, home = fake_dashboard
    api.add_task(task("t1"))
    page = open_logged_in(browser, served, home)
    page.wait_for_selector("tr[data-task='t1']")
    first = page.evaluate("localStorage.getItem('hal-session')")
    assert len(first) > 40 and first not in page.content()  # stored, its <meta> removed
    tab = page.context.new_page()  # a second tab reads it from the origin's storage
    tab.goto(served.base + "/tasks/t1")
    tab.wait_for_selector("#task-status .badge-running")
    tab.goto(login_url(home, served.base))  # a new login: a new credential
    tab.wait_for_selector("tr[data-task='t1']")
    assert tab.evaluate("localStorage.getItem('hal-session')") != first
    # The first tab, not reloaded, sends the new one from now on.
    assert page.evaluate("hal.api('GET', '/tasks').then((tasks) => tasks.length)") == 1
    # Without the credential (storage cleared, another profile) the pages read nothing.
    page.evaluate("localStorage.removeItem('hal-session')")
    page.reload()
    page.wait_for_selector("#main :text('Logged out')")
    assert page.locator("tr[data-task='t1']").count() == 0


def test_a_link_the_agent_prints_in_the_terminal_is_inert(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    # xterm.js opens an OSC 8 hyperlink on a click (after a confirm naming the URL): an agent
    # could plant a phishing link in its pane. The log drops OSC 8; the terminal must too.
    page, _ = live_task_page(browser, fake_dashboard)
    page.evaluate(
        """() => hal.openTerminal(document.getElementById("terminal"), "t1", false).then(
          (opened) => new Promise((resolve) => {
          const link = "\\x1b]8;;https://evil.example/\\x1b\\\\CLICKME-CLICKME\\x1b]8;;\\x1b\\\\";
          const plant = () => opened.term.write("\\x1b[H" + link, resolve);
          if (opened.socket.readyState === WebSocket.CLOSED) plant();
          else opened.socket.addEventListener("close", plant);  // the fake has no terminal
        }))"""
    )
    box = page.locator("#terminal .xterm-screen").bounding_box()
    assert box is not None
    x, y = box["x"] + 20, box["y"] + 6  # inside "CLICKME" on the first row
    page.mouse.move(x - 5, y)
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r(0)))")  # after it
    assert getattr(page, "dialogs", []) == []
    assert len(page.context.pages) == 1  # no window opened
    shot(page)


def test_a_link_never_leaves_the_dashboard_whatever_its_characters(
    browser: Any, fake_dashboard: Dashboard
) -> None:
    # A URL parser drops tabs and line breaks: "/\t/evil.example" passed the "//" check and
    # became the foreign "//evil.example".
    served, _, home = fake_dashboard
    page = open_logged_in(browser, served, home)
    page.wait_for_selector("#live-state[data-state='live']")
    hrefs = ["/\t/evil.example/", "/\n/evil.example/", "/\r\n/evil.example/", "/\\evil.example/"]
    origins = page.evaluate(
        "(hrefs) => hrefs.map((h) => new URL(hal.el('a', { href: h }).href).origin)", hrefs
    )
    assert origins == [served.base] * len(hrefs)
    assert page.evaluate("hal.safeHref('/tasks/t1')") == "/tasks/t1"


def test_many_edits_in_the_timeline_keep_the_page_bounded(
    browser: Any, fake_dashboard: Dashboard, shot: Any
) -> None:
    """One capped diff per tool call was not a bound: a MultiEdit's edits each got their own
    5000 rows, and each of the 2000 timeline entries too (millions of rows froze the page)."""
    page, api = live_task_page(browser, fake_dashboard)
    lines = "\n".join(f"line {n}" for n in range(300))
    edits = [{"old_string": "", "new_string": lines} for _ in range(40)]  # 12,000 rows
    api.emit(task_id="t1", type="tool_call", name="MultiEdit",
             input={"file_path": "many.txt", "edits": edits})  # fmt: skip
    for n in range(12):  # 48,000 rows
        content = "\n".join(f"file {n} line {k}" for k in range(4000))
        api.emit(task_id="t1", type="tool_call", name="Write",
                 input={"file_path": f"f{n}.txt", "content": content})  # fmt: skip
    last_edit = {"file_path": "last.txt", "old_string": "a", "new_string": "THE END"}
    api.emit(task_id="t1", type="tool_call", name="Edit", input=last_edit)
    page.wait_for_selector("#timeline .ev-tool:nth-child(14)", timeout=60000)
    rows = page.locator("#timeline .diff-table tr").count()
    assert rows <= 20_000, rows
    cut = page.locator("#timeline .ev-tool").nth(0).inner_text()
    assert "`hal task diff` has all of them" in cut  # the MultiEdit's own cut, said
    # A call past the timeline's budget offers its diff, built when asked for.
    last = page.locator("#timeline .ev-tool").nth(13)
    last.locator("button.show-diff").click()
    assert "THE END" in last.locator(".diff-table").inner_text()
    assert page.evaluate("1 + 1") == 2
    page.evaluate("document.querySelectorAll('#timeline details').forEach(d => d.open = false)")
    shot(page)


def test_a_written_line_that_looks_like_a_header_is_shown_in_the_timeline(
    browser: Any, fake_dashboard: Dashboard
) -> None:
    """The inline diff of a Write had "@@ -1 +1 @@" (no counts): a written line "++ b/x"
    became "+++ b/x", read as the file's name, and was not shown."""
    page, api = live_task_page(browser, fake_dashboard)
    content = "b = 1\n++ b/README.md\n-- not a header either"
    api.emit(task_id="t1", type="tool_call", name="Write",
             input={"file_path": "run.py", "content": content})  # fmt: skip
    page.wait_for_selector("#timeline .diff-table")
    assert page.locator("#timeline .file-name").all_inner_texts() == ["run.py"]
    added = page.locator("#timeline td.add").all_inner_texts()
    assert added == ["b = 1", "++ b/README.md", "-- not a header either"]


def test_a_flood_of_usage_events_reads_each_task_a_bounded_number_of_times(
    browser: Any, fake_dashboard: Dashboard
) -> None:
    """The overview read a task once per event that changed it, every read in flight at
    once: an agent printing usage a line made each open overview send as many requests."""
    served, api, home = fake_dashboard
    api.add_task(task("t1"))
    page = open_logged_in(browser, served, home)
    page.wait_for_selector("#live-state[data-state='live']")
    page.wait_for_selector("[data-task='t1']")
    before = len(api.calls)
    for n in range(1500):
        api.emit(task_id="t1", type="usage", input_tokens=n, output_tokens=1)
    api.tasks["t1"]["status"] = "succeeded"
    api.emit(task_id="t1", type="phase", phase="succeeded")
    page.wait_for_function("() => hal.live.stats.events >= 1501", timeout=60000, polling=100)
    page.wait_for_selector("[data-task='t1'] .badge-succeeded", timeout=60000)
    quiet(api)
    reads = [c for c in api.calls[before:] if c[:2] == ("GET", "/v1/tasks/t1")]
    assert 1 <= len(reads) <= 50, len(reads)


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"status": "failed", "branch_made": False},
         "none: no branch was made (the task ended before its work was brought back)"),
        ({"status": "running", "branch_made": False},
         "none yet (hal/t1 is made when the task's work is brought back)"),
        ({"status": "succeeded", "branch_made": True}, "hal/t1"),
    ],
)  # fmt: skip
def test_the_task_page_names_the_branch_only_once_it_was_made(
    browser: Any, fake_dashboard: Dashboard, fields: dict[str, Any], said: str
) -> None:
    served, api, home = fake_dashboard
    api.add_task(task("t1", **fields))
    page = open_logged_in(browser, served, home)
    page.goto(served.base + "/tasks/t1")
    page.wait_for_selector("#live-state[data-state='live']")
    facts = page.locator("dt").all_inner_texts()
    assert page.locator("dd").all_inner_texts()[facts.index("branch")] == said
