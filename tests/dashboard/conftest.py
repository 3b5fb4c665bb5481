"""Fixtures for the dashboard: an app served by uvicorn on 127.0.0.1, and Debian's chromium
driven by Playwright (the Playwright browser download is not used)."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"


class Served:
    """An ASGI app served by uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", ws="websockets-sansio",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"

    @property
    def base(self) -> str:
        """The app's origin."""
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def credential_in(login_answer: str) -> str:
    """The session's credential a login answer hands its page (in a ``<meta>``; never a
    cookie)."""
    match = re.search(r'<meta name="hal-session" content="([A-Za-z0-9_.-]{40,})">', login_answer)
    assert match, "the login answer carries no credential"
    return match.group(1)


def browser_missing() -> str | None:
    """Why no browser test can run here (None when chromium and playwright are there)."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (scripts/setup.sh installs Debian's chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (uv sync)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One chromium per module (skips locally without it, fails in CI). Not per session:
    sync Playwright keeps an event loop running while it is open, which the async tests of
    other modules could not start theirs under."""
    reason = browser_missing()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``shot(page, name)`` saves a screenshot under tests/artifacts/dashboard/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)

    def take(page: Any, name: str = "end") -> Path:
        path = ARTIFACTS / f"{test}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    yield take


@pytest.fixture
def fake_dashboard(tmp_path: Path) -> Iterator[tuple[Served, Any, Path]]:
    """The dashboard in front of the fake API: (server, fake api, hal home)."""
    from tests.dashboard.fake_api import TOKEN, FakeApi

    from hal9999.dashboard.app import dashboard_app

    home = tmp_path / "halhome"
    home.mkdir()
    api = FakeApi()
    served = Served(dashboard_app(home=home, api=api.app, token=TOKEN))
    yield served, api, home
    served.close()
