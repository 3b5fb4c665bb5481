"""What collection leaves for the user stays cheap to read, whatever its size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.hal import Hal, events_of

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_a_large_change_is_reported_by_size_and_diff_streams_it(
    hal: Hal, demo_repo: Path, hal_env: dict[str, str]
) -> None:
    """A 300 MB file used to pass through memory several times."""
    agent = "sh -c 'head -c 60000000 /dev/zero | tr \"\\\\0\" x | fold -w 100 > big.txt'"
    out = hal("run", "--provider", "bwrap", "--agent", agent, "go", "--json", timeout=180)
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    patch = Path(task["session_dir"]) / "result.patch"
    assert patch.stat().st_size > 60_000_000
    messages = [e["text"] for e in events_of(hal, task["id"]) if e["type"] == "message"]
    [sizes] = [text for text in messages if text.startswith("collected ")]
    assert f"patch {patch.stat().st_size} bytes" in sizes
    assert all(len(json.dumps(e)) < 100_000 for e in events_of(hal, task["id"]))
    # `hal task diff` streams the patch instead of reading it whole.
    argv = [sys.executable, "-c", MEASURE, sys.executable, "-m", "hal9999", "task", "diff"]
    measured = subprocess.run(
        [*argv, task["id"]], cwd=demo_repo, env=hal_env, capture_output=True, text=True, check=True
    )
    assert int(measured.stdout) < 90_000, "hal task diff held the patch in memory (KiB)"
