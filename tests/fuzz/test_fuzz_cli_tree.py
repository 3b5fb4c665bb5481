"""Property test over the whole ``hal`` command tree, in process: every command and option
(read from click itself), given wrong types, missing and empty values, unknown ids, id
prefixes that match two tasks, unicode, huge and negative numbers, ends with a documented
exit status and at most one error line, never a traceback or an internal error.

``test_fuzz_cli.py`` runs ``hal run`` and a few commands as subprocesses; this one reaches
every command cheaply (one process, a private home), including the click-free parsers of
``hal task list``, ``show`` and ``logs`` (:mod:`hal9999.cli.entry`). Left out: what would
start something long-lived or wait for a person (``run``, ``serve``, ``attach``, a follow,
a login, an image build, a fork, a resume, ``doctor``'s probes).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from tests.support.hal import commit_repo
from tests.support.tasks import DEAD_PID, make_task

from hal9999.cli.main import cli
from hal9999.store import Store
from hal9999.store.sqlite import close_open_stores

DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 124, 130, 141, 143}
"""The exit statuses the README lists."""
LEFT_OUT = {("run",), ("serve",), ("doctor",), ("task", "_run"), ("task", "attach"),
            ("task", "resume"), ("agent", "attach"), ("auth", "claude", "login"),
            ("image", "build"), ("image", "container"), ("sandbox", "fork")}  # fmt: skip
"""Commands that start a daemon, a sandbox or a VM, wait for a terminal or a browser, or
probe every agent (tested on their own)."""
FOLLOW = {"-f", "--follow"}
"""Options that wait for more output (left out: nothing ends them here)."""
TASK_IDS = ("ab12cd34", "ab98zz76", "q0000001")
"""The home's tasks: two share the prefix ``ab`` (ambiguous), one is alone."""

FUZZ = settings(
    max_examples=int(os.environ.get("HAL_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# argv cannot carry NUL, and lone surrogates have no bytes to become.
argv_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=16
)
VALUES = st.one_of(
    st.sampled_from(
        ["", " ", "-", "--", "-1", "0", "1", "1.5", "1e999", "nan", "-inf", "9" * 40, "x" * 5000,
         "é✓", "\u202e", "a\nb", "../x", "/nonexistent", "/dev/null", ".", "%s", "{{",
         "--json", "a", "ab", "ab1", *TASK_IDS, "zzzzzzzz", "AB12CD34", "ab12cd34x"]
    ),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    argv_text,
)  # fmt: skip


@dataclass(frozen=True)
class Command:
    """A leaf of the command tree: its words, options and arguments."""

    path: tuple[str, ...]
    options: tuple[click.Option, ...]
    arguments: tuple[click.Argument, ...]


def leaves(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[Command]:
    """Every runnable command under ``command`` (each lazy group's modules imported)."""
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from leaves(sub, (*path, name))
        return
    options = tuple(
        p for p in command.params if isinstance(p, click.Option) and not set(p.opts) & FOLLOW
    )
    arguments = tuple(p for p in command.params if isinstance(p, click.Argument))
    yield Command(path, options, arguments)


COMMANDS = [c for c in leaves(cli) if c.path not in LEFT_OUT]


IDS = st.sampled_from([*TASK_IDS, "ab", "AB", "ab12", "q", "zz", ""])
"""Ids and prefixes: whole, ambiguous (``ab``), unique, unknown, empty."""


def value_for(param: click.Parameter) -> st.SearchStrategy[str]:
    """Values for ``param``: its own choices now and then, ids often for an argument, and the
    hostile ones."""
    if isinstance(param.type, click.Choice):
        return st.one_of(st.sampled_from([str(c) for c in param.type.choices]), VALUES)
    if isinstance(param, click.Argument):
        return st.one_of(IDS, VALUES)
    return VALUES


ONE_IN_TEN = st.sampled_from([False] * 9 + [True])


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    """A command line: a command, some of its options (a value each, or none, or an unknown
    option), then arguments (as many as it takes, or one fewer or more)."""
    command = draw(st.sampled_from(COMMANDS))
    argv = list(command.path)
    chosen = draw(st.lists(st.sampled_from(command.options), max_size=4)) if command.options else []
    for option in chosen:
        argv.append(draw(st.sampled_from(option.opts)))
        if not option.is_flag and not draw(ONE_IN_TEN):  # sometimes its value is missing
            argv.append(draw(value_for(option)))
    if draw(ONE_IN_TEN):
        argv.append(draw(st.sampled_from(["--nosuch", "-Z", "--jso", "--help", "--json"])))
    wanted = sum(1 if a.nargs == -1 else a.nargs for a in command.arguments)
    count = max(0, wanted + (draw(st.sampled_from([-1, 1])) if draw(ONE_IN_TEN) else 0))
    arguments = command.arguments or (click.Argument(["extra"]),)
    argv += [draw(value_for(arguments[min(n, len(arguments) - 1)])) for n in range(count)]
    return argv


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private home with three finished tasks, the current directory a repository."""
    home = tmp_path / "halhome"
    for name in ["HAL_AGENT", "HAL_PROVIDER", "HAL_TIMEOUT", "HAL_LOG_LEVEL"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HAL_HOME", str(home))
    monkeypatch.setenv("HAL_NO_DAEMON", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.chdir(commit_repo(tmp_path / "repo", {"a.txt": "a\n"}))
    # The entry point adds a finder to the import system (hal9999.cli.entry); this process's
    # other tests keep theirs.
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    with open(os.devnull) as nothing:
        monkeypatch.setattr(sys, "stdin", nothing)
        yield home
        monkeypatch.undo()


def keep_tasks(home: Path) -> None:
    """The three tasks, made again when an example removed one (``hal task rm``)."""
    store = Store.open(home)
    try:
        have = {t.id for t in store.list_tasks()}
        for number, task_id in enumerate(TASK_IDS):
            if task_id not in have:
                status = ("succeeded", "failed", "stopped")[number]
                store.insert_task(make_task(home, task_id, status, runner_pid=DEAD_PID))
    finally:
        store.close()


def run_hal(argv: list[str], out: Path) -> tuple[int, str]:
    """``hal ARGV`` through the console entry point, in this process: its status, and what
    it printed on both streams."""
    from hal9999.cli.entry import _main

    saved = sys.argv, sys.stdout, sys.stderr
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with open(out, "w+", encoding="utf-8", errors="replace") as stream:
        sys.argv, sys.stdout, sys.stderr = ["hal", *argv], stream, stream
        try:
            _main()
            status: object = 0
        except SystemExit as done:
            status = done.code
        finally:
            sys.argv, sys.stdout, sys.stderr = saved
            # What the process's exit would end: its stores, the log handlers it installed.
            close_open_stores()
            for handler in [h for h in root.handlers if h not in handlers]:
                root.removeHandler(handler)
                handler.close()
            root.setLevel(level)
        stream.seek(0)
        text = stream.read()
    code = status if isinstance(status, int) else 0 if status is None else 1
    return code, text


@seed(16_50)
@FUZZ
@given(argv=argvs())
def test_any_command_line_of_any_command(home: Path, tmp_path: Path, argv: list[str]) -> None:
    keep_tasks(home)
    status, text = run_hal(argv, tmp_path / "out.txt")
    shown = f"hal {argv!r}\n{text}"
    assert "Traceback" not in text, shown
    assert "internal error" not in text, shown
    assert status in DOCUMENTED, (status, shown)
    errors = [line for line in text.splitlines() if line.startswith("hal: error:")]
    assert len(errors) <= 1, shown
    # A failure names itself in one line, except a bare group's help (status 2) and `hal
    # status` without a daemon (status 1).
    quiet = "Usage: hal" in text or "hal serve is not running" in text or argv[:1] == ["status"]
    if status != 0 and not quiet:
        assert len(errors) == 1, shown
