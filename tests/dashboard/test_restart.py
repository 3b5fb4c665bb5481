"""The dashboard survives a restart of ``hal serve``: the daemon takes its port again, an open
tab reconnects and reads its state again, a reload needs no new login; an open tab sends its
credential only to a server that proves it is this hal (not to whatever took the port while
hal was stopped); and ``hal status`` says where the dashboard is."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from tests.support.dashboard import Hal

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def hal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hal]:
    h = Hal(tmp_path_factory.mktemp("restart"))
    h.port = start(h)  # type: ignore[attr-defined]
    yield h
    h("serve", "--stop")
    from tests.processes import pointing_into, stop_everything_of

    stop_everything_of(h.home, h.env)
    assert pointing_into(h.home) == {}, f"processes left running in {h.home}"


def start(h: Hal) -> int:
    """Start the daemon; its port."""
    started = h("serve", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    return int(json.loads(started.stdout)["port"])


def stop(h: Hal) -> None:
    stopped = h("serve", "--stop")
    assert stopped.returncode == 0, stopped.stderr


def live_state(page: Any, state: str, timeout_ms: int = 60000) -> None:
    page.wait_for_function(
        f"() => document.getElementById('live-state').dataset.state === {json.dumps(state)}",
        timeout=timeout_ms,
    )


def test_status_names_the_dashboard_and_prints_a_link_to_a_terminal(hal: Hal) -> None:
    port = hal.port  # type: ignore[attr-defined]
    piped = hal("status")
    assert piped.returncode == 0, piped.stderr
    # Piped (a log, a script): the address and how to log in, never a credential.
    assert f"dashboard: http://127.0.0.1:{port}/ (`hal dashboard` prints a login link)" in (
        piped.stdout
    )
    assert "login?t=" not in piped.stdout
    # On a terminal: a login link that works.
    leader, follower = pty.openpty()
    try:
        shown = subprocess.run(
            [sys.executable, "-m", "hal9999", "status"], cwd=hal.repo, env=hal.env,
            stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE, timeout=60,
        )  # fmt: skip
        os.close(follower)
        follower = -1
        assert shown.returncode == 0, shown.stderr
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed, all is read
                break
            if not chunk:
                break
            out += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    link = re.search(rf"http://127\.0\.0\.1:{port}/login\?t=\S+", out.decode())
    assert link, out
    with httpx.Client() as browser:
        assert browser.get(link.group(0)).status_code == 200


def test_an_open_tab_carries_on_across_a_restart_on_the_same_port(
    browser: Any, hal: Hal, shot: Any
) -> None:
    page = browser.new_context().new_page()
    page.goto(hal.link())
    page.goto(f"http://127.0.0.1:{hal.port}/hive")  # type: ignore[attr-defined]
    page.wait_for_selector("#agents :text('No agents yet')")
    live_state(page, "live")
    stop(hal)
    live_state(page, "reconnecting")
    assert start(hal) == hal.port  # type: ignore[attr-defined]
    live_state(page, "live")
    # The open tab follows the new daemon: an agent made now shows up in it.
    spawned = hal("agent", "spawn", "after", "--repo", str(hal.repo))
    assert spawned.returncode == 0, spawned.stderr
    page.wait_for_selector("#agents [data-agent='after']", timeout=30000)
    assert page.evaluate("hal.live.stats.resyncs") >= 1  # it read its snapshot again
    # A reload needs no new login: the session outlives the daemon.
    page.reload()
    page.wait_for_selector("#agents [data-agent='after']", timeout=30000)
    assert "Logged out" not in page.inner_text("#main")
    shot(page)


class Squatter:
    """Another program on hal's port while hal is stopped: it records what it is sent."""

    def __init__(self, port: int) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                body = b'{"proof": "0000"}'  # it cannot know the right one
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_an_open_tab_sends_its_credential_only_to_hal(browser: Any, hal: Hal, shot: Any) -> None:
    port = hal.port  # type: ignore[attr-defined]
    page = browser.new_context().new_page()
    page.goto(hal.link())
    page.wait_for_selector("#tasks, #main table, #main section", timeout=30000)
    live_state(page, "live")
    stop(hal)
    squatter = Squatter(port)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(squatter.requests) < 2:
            time.sleep(0.2)
        # The tab's user clicks meanwhile: a request for data, which must not go out either.
        page.evaluate("hal.api('GET', '/tasks').catch(() => null)")
        assert len(squatter.requests) >= 2, squatter.requests
        paths = [path for path, _ in squatter.requests]
        assert all(path.startswith("/hello?") for path in paths), paths
        assert not [h for _, h in squatter.requests if "x-hal-session" in h]
        page.wait_for_selector("#flash :text('not this dashboard')", timeout=30000)
        shot(page, "squatted")
    finally:
        squatter.close()
    assert start(hal) == port  # the port is free again: hal takes it back
    live_state(page, "live")
    page.reload()
    live_state(page, "live")
    assert "Logged out" not in page.inner_text("#main")
