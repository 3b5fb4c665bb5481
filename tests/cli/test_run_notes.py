"""hal's own warnings during a foreground ``hal run`` reach the user: one line each on
stderr, in process and through ``hal serve``, where they were only in the task's events."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.hal import Hal, events_of, git


def test_a_warning_of_the_run_is_printed_once_on_stderr(
    hal: Hal, demo_repo: Path, tmp_path: Path, cli_path: str
) -> None:
    lib = tmp_path / "lib-repo"
    lib.mkdir()
    git(lib, "init", "-q")
    (lib / "lib.c").write_text("host only\n")
    git(lib, "add", "-A")
    git(lib, "commit", "-qm", "lib")
    # A submodule naming a host path: never fetched from inside the sandbox, said in a warning.
    git(demo_repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
    git(demo_repo, "commit", "-qm", "add a submodule")
    out = hal("run", "--provider", "bwrap", "--agent", "sh -c true", "go", "--json")
    assert "Traceback" not in out.stderr, out.stderr
    task = json.loads(out.stdout)
    assert "id" in task, (out.stdout, out.stderr)
    told = [e["text"] for e in events_of(hal, task["id"])
            if e["type"] == "message" and e["level"] == "warning"]  # fmt: skip
    submodules = [text for text in told if "submodules could not be fetched" in text]
    assert len(submodules) == 1, (cli_path, told)
    lines = [line for line in out.stderr.splitlines() if "submodules could not be" in line]
    assert lines == [f"hal: warning: {submodules[0]}"], (cli_path, out.stderr)
