"""Property tests over the real ``hal`` command line: any arguments and ``HAL_*`` values end
with a documented exit status and at most one error line, never a traceback, and leave no
half-made session, running task or sandbox behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.processes import processes_under
from tests.support.hal import AGENT, BUGGY_CALC, commit_repo, git, private_env

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(300)]

DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 124, 130}
"""The exit statuses the README lists."""
UNFINISHED = {"queued", "provisioning", "preparing", "running", "collecting"}

FUZZ = settings(
    max_examples=int(os.environ.get("HAL_FUZZ_EXAMPLES", "10")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# argv cannot carry NUL, and lone surrogates have no bytes to become.
argv_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=24
)


class World:
    """One HAL_HOME and one repository shared by every example of a test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = commit_repo(root / "repo", {"calc.py": BUGGY_CALC, "agent.sh": AGENT})
        self.bare = root / "bare.git"
        git(root, "clone", "-q", "--bare", str(self.repo), str(self.bare))
        self.home = root / "halhome"
        self.env = private_env(self.home, root / "xdg", HAL_PROVIDER="bwrap", HAL_NO_DAEMON="1",
                               # Bounded runs: a quick default agent and a short timeout.
                               HAL_AGENT="true {{prompt_file}}", HAL_TIMEOUT="20")  # fmt: skip

    def hal(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hal9999", *args],
            cwd=self.repo, env={**self.env, **(env or {})}, capture_output=True, text=True,
            timeout=120, stdin=subprocess.DEVNULL, errors="replace",
        )  # fmt: skip

    def sessions(self) -> set[str]:
        found = self.home / "sessions"
        return {p.name for p in found.iterdir()} if found.is_dir() else set()

    def tasks(self) -> list[dict[str, Any]]:
        out = self.hal("task", "list", "--json")
        assert out.returncode == 0, out.stderr
        tasks: list[dict[str, Any]] = json.loads(out.stdout)
        return tasks


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield World(tmp_path_factory.mktemp("fuzz-cli"))


def check_outcome(world: World, out: subprocess.CompletedProcess[str], before: set[str]) -> None:
    """The properties every invocation keeps."""
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert "internal error" not in text, text
    assert out.returncode in DOCUMENTED, (out.returncode, text)
    errors = [line for line in out.stderr.splitlines() if line.startswith("hal: error:")]
    assert len(errors) <= 1, out.stderr
    new = world.sessions() - before
    if out.returncode == 2:
        assert not new, f"refused as usage but left sessions {new}: {out.stderr}"
    # A failure names itself in one line, except the two documented non-error outcomes: a
    # bare group prints its help (status 2), `hal status` reports no daemon (status 1).
    quiet = "Usage: hal" in text or "hal serve is not running" in text
    if not new and out.returncode != 0 and not quiet:
        assert len(errors) == 1, out.stderr
    for task in world.tasks():
        assert task["status"] not in UNFINISHED, task
    # In-process runs destroy their sandbox at the end, whatever happened.
    assert list((world.home / "sandboxes").glob("*/*")) == []
    assert processes_under(world.home) == []


AGENTS = st.one_of(
    st.sampled_from(["true {{prompt_file}}", "sh agent.sh {{prompt_file}}", "", " ", "{{",
                     "nosuch-agent", "sh -c 'exit 3' {{prompt_file}}", "{{nope}} x"]),
    argv_text,
)  # fmt: skip
NUMBERS = st.one_of(
    st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e999", "0.5", "30", "1e300", " 5 "]),
    st.floats().map(repr),
    st.integers().map(str),
    argv_text,
)


@st.composite
def run_args(draw: st.DrawFn, world: World) -> list[str]:
    args: list[str] = ["run"]
    options: dict[str, st.SearchStrategy[str]] = {
        "--agent": AGENTS,
        "--provider": st.sampled_from(["bwrap", "", ",", "nosuch", "bwrap,nosuch", " bwrap"]),
        "--process-manager": st.sampled_from(["tmux", "direct", "", "nosuch"]),
        "--timeout": NUMBERS,
        "--retries": NUMBERS,
        "--priority": NUMBERS,
        "--env": st.one_of(
            st.sampled_from(["A=1", "NAMÉ=1", "=x", "1A", "HOME", "UNSET_X"]), argv_text
        ),
        "--repo": st.sampled_from(
            [
                "/nonexistent",
                "calc.py",
                str(world.bare),
                ".",
                "file:///nonexistent.git",
                "x" * 5000,
                "x/" * 3000,
                str(world.root),
            ]
        ),
        "--ref": st.sampled_from(["main", "nosuch"]),
        "--prompt-file": st.sampled_from(["/nonexistent", "calc.py", ".", "-", "/dev/null"]),
    }
    for name in draw(st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True)):
        args += [name, draw(options[name])]
    if draw(st.booleans()):
        args.append("--json")
    if draw(st.booleans()):
        args.append(draw(st.one_of(st.sampled_from(["-", "", "fix it", "  "]), argv_text)))
    return args


@FUZZ
@given(data=st.data())
def test_fuzz_run(world: World, data: st.DataObject) -> None:
    args = data.draw(run_args(world))
    before = world.sessions()
    check_outcome(world, world.hal(*args), before)


@FUZZ
@given(
    command=st.sampled_from(
        ["show", "diff", "logs", "events", "stop", "cancel", "rm", "resume", "attach"]
    ),
    task_id=st.one_of(st.sampled_from(["", "../x", "-", "a", "zzzzzzzz", "%", "-h"]), argv_text),
)
def test_fuzz_task_commands(world: World, command: str, task_id: str) -> None:
    before = world.sessions()
    check_outcome(world, world.hal("task", command, "--", task_id), before)


@FUZZ
@given(
    args=st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "task",
                    "list",
                    "--status",
                    "--limit",
                    "--json",
                    "trust",
                    "--show",
                    "--revoke",
                    "pool",
                    "status",
                    "doctor",
                    "--help",
                    "sandbox",
                    "image",
                    "list",
                    "-1",
                    "0",
                    "running",
                ]
            ),
            argv_text,
        ),
        max_size=5,
    ),
    env=st.dictionaries(
        st.sampled_from(
            [
                "HAL_TIMEOUT",
                "HAL_PIDS",
                "HAL_CPUS",
                "HAL_MEMORY_MB",
                "HAL_NETWORK",
                "HAL_LOG_LEVEL",
                "HAL_AGENT",
                "HAL_PROVIDER",
            ]
        ),
        argv_text,
        max_size=2,
    ),
)
def test_fuzz_any_arguments_and_variables(
    world: World, args: list[str], env: dict[str, str]
) -> None:
    if "doctor" in args:
        args = [a for a in args if a != "doctor"]  # slow (probes agents); tested on its own
    before = world.sessions()
    check_outcome(world, world.hal(*args, env=env), before)
