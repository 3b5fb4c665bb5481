"""Helpers of the CLI tests: leftover processes, imported modules, terminals, fake agents."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.cli.quick_agents import quick_agents_path
from tests.support.hal import Hal, tasks_json


def quick_path(hal_env: dict[str, str]) -> str:
    """The PATH for a ``hal doctor`` run, which look at the config check: the agent CLIs
    answer at once (tests/cli/quick_agents.py)."""
    stubs = Path(hal_env["HAL_HOME"]).parent / "quick-agents"
    return quick_agents_path(stubs, os.environ.get("PATH", "/usr/bin:/bin"))


def hal_processes_of(task: dict[str, object]) -> list[str]:
    """Command lines of live processes that belong to the task's session."""
    needle = str(task["session_dir"]).encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmd:
            found.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def assert_no_leftovers(task: dict[str, object]) -> None:
    """No process of the task is alive and its sandbox is gone."""
    deadline = time.monotonic() + 5
    while hal_processes_of(task) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hal_processes_of(task) == []
    home = Path(str(task["session_dir"])).parents[1]
    state = home / "sandboxes" / str(task["provider"])
    leftovers = [p.name for p in state.iterdir()] if state.exists() else []
    assert leftovers == [], f"sandboxes left behind: {leftovers}"


def wait_for_status(
    hal: Hal, wanted: str, timeout: float = 30, *, ended: bool = False
) -> dict[str, object]:
    """Poll until the only task reaches ``wanted``; with ``ended``, until its run is over
    too (``runner_pid`` cleared). A run ended before its sandbox is gone writes its final
    status first and clears the runner and a sandbox made for it alone once that sandbox is
    destroyed (``RunEnding._finish``): in between the record names both."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = tasks_json(hal)
        if tasks and tasks[0]["status"] == wanted and not (ended and tasks[0]["runner_pid"]):
            return tasks[0]
        time.sleep(0.2)
    pytest.fail(f"task never became {wanted}: {tasks_json(hal)}")


IMPORTED = """
import json, os, runpy, sys
def imported():
    sys.stderr.write("\\n" + json.dumps(sorted(sys.modules)))
    sys.stderr.flush()
def exit_now(code, _exit=os._exit):
    imported()
    _exit(code)
os._exit = exit_now
sys.argv = ["hal", *sys.argv[1:]]
try:
    runpy.run_module("hal9999", run_name="__main__")
except SystemExit:
    pass
imported()
"""
"""``python -c`` of this runs ``hal ARGS`` as the console script does, then writes the names
of the modules it imported as a last line of JSON on stderr, also when hal ends with
``os._exit`` (``entry.exit_at_once``: the thin run, an in-process run with nothing left)."""


def _hidden_at_end(text: str) -> bool:
    """Whether a terminal is left concealing (SGR 8) or drawing black on black once
    ``text`` is written (the state of the SGR sequences in it, in order)."""
    concealed, fg, bg = False, None, None
    for params in re.findall(r"\x1b\[([0-9;:]*)m", text):
        codes = [int(c) if c.isdigit() else 0 for c in params.split(";")]
        i = 0
        while i < len(codes):
            code = codes[i]
            if code == 0:
                concealed, fg, bg = False, None, None
            elif code == 8:
                concealed = True
            elif code == 28:
                concealed = False
            elif 30 <= code <= 37:
                fg = code - 30
            elif 40 <= code <= 47:
                bg = code - 40
            elif code in (38, 48) and codes[i + 1 : i + 2] == [5]:
                value = codes[i + 2] if i + 2 < len(codes) else 0
                fg, bg = (value, bg) if code == 38 else (fg, value)
                i += 2
            i += 1
    return concealed or (fg is not None and fg == bg)


def _run_in_terminal(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run hal with a pseudo-terminal as stdout; return what the terminal received."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hal9999", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    return b"".join(chunks).decode()


def fake_bin(tmp_path: Path) -> str:
    """A PATH whose `claude` is of another version, whose `codex` fails, and without aider.

    /usr/bin stays on it: the bwrap check runs `true` inside a sandbox, which sees only /usr.
    The other agent CLIs installed there answer at once (tests/cli/quick_agents.py): only
    their install hints are checked here, and the real ones (gemini and opencode, ~6 s of
    CPU a doctor) are asked in test_doctor_shows_installed_versions.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("git", "tmux", "bwrap"):  # wherever they live on this host
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    scripts = {"claude": "echo '9.9.9 (Claude Code)'", "codex": "echo broken >&2; exit 3"}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    rest = quick_agents_path(tmp_path / "quick-agents", "/usr/bin:/bin")
    for name in ("claude", "codex", "aider"):  # as above: faked, failing, missing
        (tmp_path / "quick-agents" / name).unlink(missing_ok=True)
    return f"{bin_dir}:{rest}"


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


RUN_AND_LIST = """
import atexit, gc, json, runpy, sys
atexit.register(lambda: None)  # the thin run then exits as usual, through the lines below
loading = []  # collections while the config and the task service load (before any freeze)
def seen(phase, info):
    if phase == "start" and "hal9999.config" in sys.modules and not gc.get_freeze_count():
        loading.append(info["generation"])
gc.callbacks.append(seen)
import tokenize
parsed = []  # a builtin's text signature parsed (inspect -> tokenize), e.g. pydantic reading
real_compile = tokenize._compile  # a default factory's signature: `list`'s cost ~1.3 ms
tokenize._compile = lambda expr: parsed.append(1) or real_compile(expr)
import re._compiler
patterns = []  # every regex compiled from here on (`re` compiles a pattern's text once)
real_re = re._compiler.compile
re._compiler.compile = lambda pattern, flags=0: patterns.append(pattern) or real_re(pattern, flags)
import typing
forward = []  # hal modules whose body made a typing.ForwardRef: a compile() of its text each
real_forward = typing.ForwardRef.__init__
def counted(self, arg, *rest, **kw):
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    if name.startswith("hal9999.") and name != "hal9999.__main__":
        forward.append(name)
    real_forward(self, arg, *rest, **kw)
typing.ForwardRef.__init__ = counted
sys.argv = ["hal", *sys.argv[1:]]
try:
    runpy.run_module("hal9999", run_name="__main__")
except SystemExit as exc:
    sys.stderr.write("\\nexit " + str(exc.code))
sys.stderr.write("\\n" + json.dumps(sorted(sys.modules)))
from pydantic import BaseModel
built = sorted(
    f"{name}.{value.__name__}"
    for name, module in list(sys.modules.items()) if name.startswith("hal9999")
    for value in list(vars(module).values())
    if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == name
    and value.__pydantic_complete__
)
events = sys.modules.get("hal9999.events.models")  # none in a thin run
union = events.EVENT_ADAPTER.pydantic_complete if events is not None else None
# Classes @dataclass made (its parameters in the class's own namespace: it compiled their
# methods), not plain subclasses of one, which inherit its fields and compile nothing.
dataclasses = sorted(
    f"{name}.{value.__name__}"
    for name, module in list(sys.modules.items()) if name.startswith("hal9999")
    for value in list(vars(module).values())
    if isinstance(value, type) and "__dataclass_params__" in vars(value)
    and value.__module__ == name
)
found = {"built": built, "union": union, "collections": loading, "tokenized": len(parsed),
         "dataclasses": dataclasses, "forward": forward,
         "patterns": [repr(p) for p in patterns]}
sys.stderr.write("\\n" + json.dumps(found))
"""


THIN_RUN_LEAVES_OUT = frozenset({
    # hal9999.lighttyping: typing and what it imports are a large share of the
    # thin client's start; its modules import typing's names only for the checker.
    "typing",
    # Paths as strings (hal9999.workdir.pure_path): pathlib and its fnmatch and ntpath
    # are dear too (and import urllib.parse).
    "pathlib", "fnmatch", "ntpath",
    # hal9999.plainjson (json's own C encoder and scanner) and the client's own query string:
    # json, urllib.parse and ipaddress were ~8M more (and kept `re` on the path).
    "json", "urllib", "ipaddress",
    # The host git status started by posix_spawnp (cli.notices.HostGit), not subprocess:
    # it and its signal, threading, selectors, locale, re and enum were ~19M more.
    "subprocess", "signal", "threading", "selectors", "locale", "re", "enum",
    "math",  # a shared library to load; only --json's document uses it (cli.echo)
})  # fmt: skip
"""Standard library modules the thin ``hal run`` client does without,
checked on import in ``test_daemon_run.py`` and on a whole run in ``test_daemon_run_e2e.py``."""


BEFORE_THE_POST = frozenset({"hal9999.cli.notices", "select"})
"""Modules the thin client has not imported when it posts the task (the host ``git status``
runs while the daemon creates it)."""


CAPTURED_CLAUDE = Path(__file__).parents[1] / "agents" / "captured" / "claude" / "stdout.jsonl"


def _fake_claude(hal_env: dict[str, str], demo_repo: Path) -> None:
    """The claude preset runs a script that replays a captured stream-json run."""
    (demo_repo / "claude-stream.jsonl").write_bytes(CAPTURED_CLAUDE.read_bytes())
    script = demo_repo / "fake-claude"
    script.write_text("#!/bin/sh\ncat /workspace/claude-stream.jsonl\n")
    script.chmod(0o755)
    subprocess.run(["git", "-C", str(demo_repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(demo_repo), "commit", "-qm", "fake claude"], check=True)
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[agents.claude]\ncommand = "/workspace/fake-claude"\n')
