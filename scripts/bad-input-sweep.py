"""Every ``hal`` subcommand and option with wrong values; prints what is not one clear line.

Usage: ``PYTHONPATH=src .venv/bin/python scripts/bad-input-sweep.py DIR [PREFIX]``. DIR gets
a private HAL_HOME, config directory and git repository (the commands run in it); PREFIX
limits the sweep to commands starting with it (``"task show"``). Set ``HAL_SWEEP_ENV`` to a
JSON object of more variables (``{"HAL_NO_DAEMON": "1"}``; start ``hal serve --detach`` on
DIR/home first to sweep through a daemon).

Each case sets one argument or option to a bad value (empty, blank, not UTF-8, negative,
huge, nan, 100 KB, a line break, an escape, a file, a symlink loop, a missing path, ...),
the others to plausible ones. A case is BAD when hal printed a traceback or an "internal
error", failed without exactly one ``hal: error:`` line, wrote an error line over 600
characters, or died of a signal. A run that starts and fails as a task (its agent is not
signed in, its ref does not exist) is a task's failure, listed too: read those by eye.

Each command runs in a forked child of this process (hal already imported) with its own
argv, environment and standard streams: a subprocess without the start-up cost, ~1500
cases in a few minutes. ``serve``, ``attach``, ``dashboard``, ``image build``/``container``
and ``auth claude login`` are left out (they start servers, terminals or image builds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from hal9999.cli import entry
from hal9999.cli.main import cli

BAD = {
    "empty": "", "space": "   ", "not-utf8": b"\xff\xfe".decode("utf-8", "surrogateescape"),
    "neg": "-1", "zero": "0", "huge": "9" * 40, "nan": "nan", "inf": "inf", "1e400": "1e400",
    "long": "a" * 100_000, "newline": "a\nb", "escape": "a\x1b[31mb", "dashes": "--",
    "missing": "/nonexistent/x", "prefix": "a", "dotdot": "../../etc/passwd",
    "bidi": "é\u202e", "dot": ".",
}  # fmt: skip
SANE = {"name": "alice", "text": "hi", "prompt": "hi", "task_id": "zzzzzz", "count": "1",
        "approval_id": "zzzz", "question_id": "zzzz", "image": "img", "sandbox_id": "sb",
        "names": "img", "argv": "true"}  # fmt: skip
SKIP = {("serve",), ("dashboard",), ("task", "attach"), ("agent", "attach"),
        ("image", "build"), ("image", "container"), ("auth", "claude", "login")}  # fmt: skip


def commands(cmd: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    """Every leaf command under ``cmd`` with its words."""
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        if hasattr(cmd, "load_all"):
            cmd.load_all()
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from commands(sub, [*path, name])
    else:
        yield path, cmd


def cases(base: Path, prefix: str) -> Iterator[tuple[list[str], str, list[str]]]:
    """(command words, what is bad, its arguments) for every command and parameter."""
    bad = {**BAD, "file": str(base / "afile"), "loop": str(base / "loop")}
    for path, cmd in commands(cli, []):
        if tuple(path) in SKIP or not " ".join(path).startswith(prefix):
            continue
        args = [p for p in cmd.params if isinstance(p, click.Argument)]
        options = [p for p in cmd.params if isinstance(p, click.Option) and not p.is_flag]
        plain = [SANE.get(a.name or "", "x") for a in args]
        for i, arg in enumerate(args):
            for label, value in bad.items():
                yield path, f"{arg.name}={label}", [*plain[:i], value, *plain[i + 1 :]]
        for option in options:
            for label, value in bad.items():
                yield path, f"{option.opts[-1]}={label}", [option.opts[-1], value, *plain]


def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """``hal ARGV`` in a forked child: its status and standard error."""
    err = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the child never returns
        code = 99
        try:
            os.setsid()
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(err.fileno(), 2)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = ["hal", *argv]
            signal.alarm(60)
            entry.main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    err.seek(0)
    return os.waitstatus_to_exitcode(status), err.read().decode(errors="replace")


def problems(status: int, stderr: str) -> list[str]:
    """What is wrong with an answer, by the product's rule (empty: nothing)."""
    found = []
    if "Traceback" in stderr:
        found.append("traceback")
    if "internal error" in stderr:
        found.append("internal error")
    lines = [line for line in stderr.splitlines() if line.startswith("hal: error:")]
    if status != 0 and len(lines) != 1:
        found.append(f"{len(lines)} error lines")
    if any(len(line) > 600 for line in lines):
        found.append("long line")
    if status < 0:
        found.append(f"signal {-status}")
    return found


def main() -> None:
    """Sweep and print one line per case."""
    base = Path(sys.argv[1]).resolve()
    prefix = sys.argv[2] if len(sys.argv) > 2 else ""
    repo = base / "repo"
    if not repo.exists():
        repo.mkdir(parents=True)
        for git in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "i"]):
            if git[0] == "add":
                (repo / "a").write_text("x\n")
            subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@a", *git],
                           cwd=repo, check=True)  # fmt: skip
    (base / "afile").write_text("x")
    if not (base / "loop").is_symlink():
        (base / "loop").symlink_to(base / "loop")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    more: dict[str, Any] = json.loads(os.environ.get("HAL_SWEEP_ENV", "{}"))
    env |= {"HAL_HOME": str(base / "home"), "XDG_CONFIG_HOME": str(base / "xdg"), **more}
    bad = 0
    for path, label, argv in cases(base, prefix):
        status, stderr = run([*path, *argv], env, repo)
        found = problems(status, stderr)
        bad += bool(found)
        lines = [line for line in stderr.splitlines() if line.startswith("hal: error:")]
        shown = (lines or stderr.strip().splitlines() or [""])[0][:200]
        tag = "BAD" if found else "ok "
        say(f"{tag} {' '.join(path):20} {label:22} {status:4} {found} {shown!r}")
    say(f"{bad} bad")


def say(line: str) -> None:
    """One line of the report, at once (a long sweep is read as it goes)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
