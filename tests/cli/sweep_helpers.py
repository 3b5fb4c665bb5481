"""The secret sweep's tools: a fake ``claude`` that leaks every value it holds in
every way it can, each secret's forms as hal documents it masks them, and the places on the
host that are searched for them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

LEAKY_CLAUDE = r"""#!/usr/bin/env python3
import base64, json, os, subprocess, sys, urllib.parse
names = ("LEAK_SECRET", "MY_API_KEY", "ANTHROPIC_API_KEY")
values = [os.environ[n] for n in names if os.environ.get(n)]
cred = os.path.expanduser("~/.config/tool/token.json")
if os.path.exists(cred):
    values.append(open(cred).read().strip())
def say(o):
    print(json.dumps(o), flush=True)
say({"type": "system", "subtype": "init", "cwd": "/workspace", "session_id": "s-" + values[0],
     "tools": ["T" + v for v in values], "model": "m-" + values[0]})
for v in values:
    b = v.encode()
    print("plain", v, "stderr too", file=sys.stderr)
    print("b64", base64.b64encode(b).decode(), "url", base64.urlsafe_b64encode(b).decode())
    print("hex", b.hex(), b.hex().upper(), "rev", v[::-1])
    print("json", json.dumps({"k": v + "\n"}), "url", urllib.parse.quote(v, safe=""))
    half = len(v) // 2
    print("split", v[:half]); print(v[half:])
    say({"type": "assistant", "message": {"id": "m1", "type": "message", "role": "assistant",
         "model": "model-" + v, "content": [{"type": "tool_use", "id": "tu-" + v,
         "name": "tool-" + v, "input": {"q": v}}], "usage": {"input_tokens": 1,
         "output_tokens": 1}}, "session_id": "s-" + v})
# One line far past the log cap, a secret across the head's end and one in the tail.
cap = int(float(os.environ.get("LEAK_CAP", "0")))
print("x" * (cap // 2 - 5) + values[0] + "y" * cap + values[1], flush=True)
git = ["git", "-c", "user.name=a", "-c", "user.email=a@a"]
for v in values:
    subprocess.run([*git, "branch", "br-" + v], check=False)
    subprocess.run([*git, "tag", "-m", "tag " + v, "tag-" + v], check=False)
if os.environ.get("LEAK_COMMIT"):
    open("leaked.txt", "w").write(values[0] + "\n")
    subprocess.run([*git, "add", "leaked.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "msg " + values[1]], check=True)
else:
    open("ok.txt", "w").write("fine\n")
say({"type": "result", "subtype": "error_" + values[0], "is_error": True,
     "result": "err " + values[0], "session_id": "s-" + values[0], "total_cost_usd": 0.01,
     "usage": {"input_tokens": 2, "output_tokens": 2},
     "modelUsage": {"model-" + values[0]: {"inputTokens": 2, "outputTokens": 2}}})
"""
"""The fake ``claude``: each value it holds (``--secret``, ``--env``, its placeholder key, a
credential file's token) printed plain, base64, hex, reversed, JSON-escaped, percent-encoded,
split over two lines, on stderr, in stream-json's ids, tool and model names and error, past
the log cap, and as branch and tag names (and, with ``LEAK_COMMIT``, in a committed file and
a commit message)."""


def forms(secret: str) -> list[bytes]:
    """The forms of ``secret`` hal promises to mask (docs/security.md, section 10)."""
    raw = secret.encode()
    return [
        raw,
        base64.b64encode(raw)[: len(raw) * 4 // 3],
        base64.urlsafe_b64encode(raw)[: len(raw) * 4 // 3],
        raw.hex().encode(),
        raw.hex().upper().encode(),
        secret[::-1].encode(),
        json.dumps(secret)[1:-1].encode(),
        urllib.parse.quote(secret, safe="").encode(),
    ]


def found_in(data: bytes, secrets: Iterable[str]) -> list[str]:
    """Which of ``secrets`` appear in ``data`` in any of their :func:`forms`."""
    return [s for s in secrets if any(form in data for form in forms(s))]


def files_holding(root: Path, secrets: Iterable[str]) -> dict[str, list[str]]:
    """Each file under ``root`` (relative path) holding one of ``secrets``, by name."""
    wanted = list(secrets)
    held: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            if hits := found_in(path.read_bytes(), wanted):
                held[str(path.relative_to(root))] = hits
    return held


def others_can_read(path: Path, root: Path) -> bool:
    """Whether another local user (of the group, or any) can read ``path``: every directory
    from ``root`` down to it lets them through, and the file lets them read."""
    for bits_x, bits_r in ((0o010, 0o040), (0o001, 0o004)):
        dirs = [root, *[p for p in path.parents if root in p.parents]]
        if all(d.stat().st_mode & bits_x for d in dirs) and path.stat().st_mode & bits_r:
            return True
    return False


def repo_text(repo: Path) -> bytes:
    """Everything the user's repository keeps: every object, every ref, every reflog."""
    objects = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"],
        cwd=repo, capture_output=True, check=True,
    ).stdout  # fmt: skip
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname) %(contents)"],
        cwd=repo, capture_output=True, check=True,
    ).stdout  # fmt: skip
    files = b"".join(
        p.read_bytes() + p.name.encode()
        for p in (repo / ".git").rglob("*")
        if p.is_file() and "objects" not in p.relative_to(repo / ".git").parts
    )
    return objects + refs + files


def host_processes() -> dict[int, tuple[int, bytes, bytes]]:
    """Every process of this host's pid namespace (a sandbox's own are the agent's) this
    user can read: its parent, command line and environment."""
    mine = os.readlink("/proc/self/ns/pid")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != mine:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        found[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline, environ)
    return found


def outside(roots: set[int], procs: dict[int, tuple[int, bytes, bytes]]) -> set[int]:
    """The pids of ``procs`` outside the trees that start the agent with its variables: the
    ``roots`` (the run) and their descendants, and a task's tmux server and its panes (the
    server starts each pane with them, and lives as long as its run)."""
    inside = roots | {pid for pid, (_, argv, _) in procs.items() if argv.startswith(b"tmux\0")}
    inside |= {
        pid for pid, (_, argv, _) in procs.items() if argv.split(b"\0")[0].endswith(b"/tmux")
    }
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in procs.items() if ppid in inside} - inside
        inside |= more
        grew = bool(more)
    return set(procs) - inside


ONLY_HERE = os.urandom(4).hex()
"""Ends every value below: each test process's own, as both sweep tests (in-process and
through ``hal serve``) look through every process of the host, and on two xdist workers one
found the other's ``hal run`` holding the same values (its own, rightly) outside its tree."""
SECRET = f'sweep-Secret"7f/3a+9e c5{ONLY_HERE}'
"""A ``--secret``: a quote, a slash, a plus and a space, so its JSON-escaped, percent-encoded
and base64 forms all differ from it."""
FORWARDED = f"sweep-fwd-key-41d2b8e06a{ONLY_HERE}"
"""Forwarded with ``--env MY_API_KEY`` (a secret by its name)."""
REAL_KEY = f"sk-ant-api03-sweepRealKey5c0e9a71{ONLY_HERE}"
"""The claude preset's ``api_key_env``: stays on the host, the agent gets a placeholder."""
CRED = f"sweep-cred-token-b3f9e21c77{ONLY_HERE}"
"""A credential file's token."""
UNRELATED = f"sweep-shell-token-0a6e4d92{ONLY_HERE}"
"""A token of the user's shell that no task is given."""
CAP = 256 * 1024


def configure(hal_env: dict[str, str], repo: Path, tmp_path: Path) -> None:
    (repo / "fake-claude").write_text(LEAKY_CLAUDE)
    (repo / "fake-claude").chmod(0o755)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "fake claude"], check=True)
    (tmp_path / "token.json").write_text(CRED)
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        '[agents.claude]\ncommand = "/workspace/fake-claude"\n'
        f'[[credentials]]\nsource = "{tmp_path / "token.json"}"\n'
        'target = ".config/tool/token.json"\n'
    )


def run_watched(
    hal_env: dict[str, str], repo: Path, extra: dict[str, str], daemon: int | None = None
) -> tuple[subprocess.CompletedProcess[bytes], set[str], set[str]]:
    """``hal run`` of the leaky agent (``extra`` set and forwarded); while it runs, which
    secrets any process showed in its command line, and which a process outside the run's
    own tree (and the launches of the ``daemon`` it goes through) held in its environment."""
    env = {
        **hal_env, "LEAK_SECRET": SECRET, "MY_API_KEY": FORWARDED, "ANTHROPIC_API_KEY": REAL_KEY,
        "UNRELATED_TOKEN": UNRELATED, "HAL_LOG_CAP_MB": str(CAP / 2**20),
        "HAL_GATEWAY_IDLE_S": "600", **extra,
    }  # fmt: skip
    more = [arg for name in extra for arg in ("--env", name)]
    argv = [sys.executable, "-m", "hal9999", "run", "--secret", "LEAK_SECRET", "--env",
            "MY_API_KEY", *more, "--agent", "claude", "leak everything"]  # fmt: skip
    everything = [SECRET, FORWARDED, REAL_KEY, CRED, UNRELATED]
    in_argv: set[str] = set()
    in_environ: set[str] = set()
    # Files, not pipes: the agent prints past the log cap, and a pipe nobody reads blocks it.
    out, err = (repo.parent / f"{repo.name}.{name}" for name in ("out", "err"))
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(argv, cwd=repo, env=env, stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        procs = host_processes()
        roots = {proc.pid} | {pid for pid, (ppid, _, _) in procs.items() if ppid == daemon}
        for pid in outside(roots, procs) - {os.getpid()}:
            if hits := found_in(procs[pid][2], everything):
                in_environ.update(f"{hit} in {procs[pid][1][:200]!r}" for hit in hits)
        for _, cmdline, _ in procs.values():
            in_argv.update(found_in(cmdline, everything))
        time.sleep(0.02)
    proc.wait(timeout=30)
    done = subprocess.CompletedProcess(argv, proc.returncode, out.read_bytes(), err.read_bytes())
    return done, in_argv, in_environ
