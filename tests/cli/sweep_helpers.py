"""The secret sweep's tools (stop 52): a fake ``claude`` that leaks every value it holds in
every way it can, each secret's forms as hal documents it masks them, and the places on the
host that are searched for them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
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


def outside(run: int, procs: dict[int, tuple[int, bytes, bytes]]) -> set[int]:
    """The pids of ``procs`` outside the trees that start the agent with its variables: the
    run ``run`` and its descendants, and a task's tmux server and its panes (the server
    starts each pane with them, and lives as long as its run)."""
    inside = {run} | {pid for pid, (_, argv, _) in procs.items() if argv.startswith(b"tmux\0")}
    inside |= {
        pid for pid, (_, argv, _) in procs.items() if argv.split(b"\0")[0].endswith(b"/tmux")
    }
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in procs.items() if ppid in inside} - inside
        inside |= more
        grew = bool(more)
    return set(procs) - inside
