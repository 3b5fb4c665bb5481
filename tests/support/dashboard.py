"""Logging a browser into the dashboard and the fake records its pages show."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.dashboard.conftest import Served
from tests.support.hal import BUGGY_CALC, commit_repo, private_env

from hal9999.dashboard.auth import login_url

HOSTILE = [
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned='img'\">",
    "<a href=\"javascript:window.__pwned='link'\">click me</a>",
    "<svg onload=\"window.__pwned='svg'\"></svg>",
    "\x1b]8;;javascript:window.__pwned='osc8'\x1b\\osc link\x1b]8;;\x1b\\",
]
"""Payloads planted in agent output, file names, prompts and tool calls."""


LINES = 40
SLOW = f"""#!/bin/sh
# Prints numbered lines slowly, with colour, then edits a file.
i=1
while [ $i -le {LINES} ]; do
  printf '\\033[32mline %d\\033[0m of {LINES}\\n' $i
  i=$((i + 1))
  sleep 0.1
done
echo "def add(a, b):\\n    return a + b" > calc.py
"""


class Hal:
    """A ``hal serve`` on a private home over a demo repository."""

    def __init__(self, root: Path) -> None:
        self.repo = commit_repo(root / "repo", {"calc.py": BUGGY_CALC, "slow.sh": SLOW})
        self.home = root / "halhome"
        self.env = private_env(self.home, root / "xdg", HAL_PROVIDER="bwrap")

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hal9999", *args],
            cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def link(self) -> str:
        out = self("dashboard", "--json")
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)["url"])


def open_logged_in(browser: Any, served: Served, home: Path, **context: Any) -> Any:
    """A new page of ``browser`` logged into the dashboard; it keeps its dialogs' messages."""
    page = browser.new_context(**context).new_page()
    page.on(
        "dialog",
        lambda d: (
            setattr(page, "dialogs", [*getattr(page, "dialogs", []), d.message]),
            d.dismiss(),
        ),
    )
    page.goto(login_url(home, served.base))
    return page


def quiet(api: Any) -> None:
    """Wait until the page has sent no request to the fake API for a second: the reads
    the events started have all come in."""
    settled, seen = 0, -1
    while settled < 5:
        time.sleep(0.2)
        settled, seen = (settled + 1, seen) if len(api.calls) == seen else (0, len(api.calls))


FAKE_NOTIFICATION = """
window.__notes = [];
window.Notification = class {
  constructor(title, options) { window.__notes.push([title, (options || {}).body || ""]); }
  static get permission() { return window.__granted ? "granted" : "default"; }
  static requestPermission() { window.__granted = true; return Promise.resolve("granted"); }
};
"""
"""Records the notifications the page shows (the real ones need a desktop)."""
