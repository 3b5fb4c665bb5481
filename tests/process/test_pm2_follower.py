"""The in-sandbox PM2 follower (:data:`hal9999.process.pm2inside.FOLLOW`) on the host, against
a scripted ``pm2``: what ``pm2 jlist`` says, call after call, and what reaches the app's log,
made exact so the follower's end and its copy can be checked without a loaded machine.

Each test names the defect it pins: the follower ended when a state had "held" for a second
(a restart PM2 carried out later was lost), it killed its ``tail`` half a
second after the end whether or not the copy had caught up, and ``pm2`` failing for a moment
was taken for the app being gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.process import spec_for

from hal9999.process import pm2inside
from hal9999.spec import ShellCommand

pytestmark = [pytest.mark.pm2, pytest.mark.timeout(60)]

FAKE_PM2 = """#!{python}
# A scripted pm2: `start FILE` writes the plan's first output to the app's log; each
# `jlist` takes the next step of the plan (the last one repeats): output appended to the log
# first, then the list printed.
import json, os, sys
home = os.environ["PM2_HOME"]
plan = json.load(open(os.path.join(os.environ["HOME"], "plan.json")))
calls = os.path.join(home, "calls")
def log(name, text):
    with open(os.path.join(home, name + ".log"), "a") as out:
        out.write(text)
if sys.argv[1] == "start":
    name = json.load(open(sys.argv[2]))["apps"][0]["name"]
    open(os.path.join(home, "name"), "w").write(name)
    log(name, plan["start"])
elif sys.argv[1] == "jlist":
    name = open(os.path.join(home, "name")).read()
    n = int(open(calls).read()) if os.path.exists(calls) else 0
    open(calls, "w").write(str(n + 1))
    step = plan["jlist"][min(n, len(plan["jlist"]) - 1)]
    log(name, step.get("append", ""))
    if "raw" in step:
        print(step["raw"])
    else:
        app = step["app"]
        env = {{"status": app["status"], "exit_code": app["exit_code"],
                "restart_time": app["restarts"], "autorestart": True, "stop_exit_codes": [0]}}
        print(json.dumps([{{"name": name, "pid": app["pid"], "pm2_env": env}}]))
"""


def _app(status: str, pid: int, exit_code: int, restarts: int) -> dict[str, Any]:
    return {"app": {"status": status, "pid": pid, "exit_code": exit_code, "restarts": restarts}}


def _follow(tmp_path: Path, plan: dict[str, Any], read_delay_s: float = 0.0) -> tuple[int, str]:
    """Run the follower of an on-failure app against ``plan``; its status and output, read
    ``read_delay_s`` apart in 64 KiB pieces (a slow reader downstream, as the sandbox's exec
    stream and the host's supervisor are under load)."""
    home = tmp_path / "home"
    fake = tmp_path / "bin"
    home.mkdir()
    fake.mkdir()
    (home / "plan.json").write_text(json.dumps(plan))
    pm2 = fake / "pm2"
    pm2.write_text(FAKE_PM2.format(python=sys.executable))
    pm2.chmod(0o755)
    node = shutil.which("node")
    assert node is not None
    os.symlink(node, fake / "node")
    sleep = fake / "sleep"  # counts the follower's naps
    sleep.write_text('#!/bin/sh\necho >> "$HOME/sleeps"\nexec /bin/sleep "$@"\n')
    sleep.chmod(0o755)
    spec = spec_for(tmp_path, ShellCommand(script="echo run; exit 3"))
    document = pm2inside.payload(spec, "hal-test-app", str(tmp_path), 5000, 3000)
    argv = pm2inside.follower_spec(spec, document, []).command.argv  # type: ignore[union-attr]
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(home)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    chunks: list[bytes] = []

    def read() -> None:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            chunks.append(chunk)
            time.sleep(read_delay_s)

    reader = threading.Thread(target=read)
    reader.start()
    status = proc.wait(timeout=50)
    reader.join(timeout=50)
    proc.stdout.close()
    return status, b"".join(chunks).decode()


def test_a_restart_later_than_a_second_is_followed(tmp_path: Path) -> None:
    """PM2 shows an app ``stopped`` between an exit and its restart (the pid kept while the
    restart is pending); under load that lasted past the follower's one-second "hold" and it
    ended with the second run's status, the third run's output lost."""
    pending = _app("stopped", 4242, 3, 1)
    late = {**_app("errored", 0, 3, 2), "append": "run\n"}
    plan = {"start": "run\n", "jlist": [pending, pending, pending, pending, late]}
    status, out = _follow(tmp_path, plan)
    assert (status, out) == (3, "run\nrun\n")


def test_the_copy_reaches_the_end_of_the_log_before_the_follower_exits(tmp_path: Path) -> None:
    """The follower killed its ``tail`` half a second after the end: whatever the reader
    downstream had not taken yet was lost. Now ``tail`` reads the log to its end and exits."""
    lines = "".join(f"line {n}\n" for n in range(300_000))  # 3.6 MB
    plan = {"start": lines, "jlist": [_app("errored", 0, 3, 2)]}
    status, out = _follow(tmp_path, plan, read_delay_s=0.1)
    assert status == 3
    assert out.endswith("line 299999\n") and len(out) == len(lines)


def test_an_app_stopped_for_good_ends_the_follower_with_its_status(tmp_path: Path) -> None:
    """No restart is coming when PM2 has zeroed the pid (stopped on request, or an exit code
    of stop_exit_codes): the follower ends with the status PM2 recorded."""
    plan = {"start": "bye\n", "jlist": [_app("stopped", 0, 1, 0)]}
    assert _follow(tmp_path, plan) == (1, "bye\n")


def test_pm2_failing_for_a_moment_is_not_the_end(tmp_path: Path) -> None:
    """``pm2 jlist`` printing no list (its daemon busy or respawning) was read as the app
    being gone: twice in a row and the follower ended with 255 while the app still ran."""
    garbage = {"raw": "[PM2] Spawning PM2 daemon"}
    later = {**_app("errored", 0, 3, 2), "append": "two\n"}
    plan = {"start": "one\n", "jlist": [garbage, garbage, garbage, later]}
    assert _follow(tmp_path, plan) == (3, "one\ntwo\n")


def test_a_running_app_is_waited_for_by_one_process(tmp_path: Path) -> None:
    """While the app ran the follower checked it with ``kill -0`` and a ``sleep 0.2``: five
    processes a second in the sandbox for the whole run. One ``tail --pid`` waits now."""
    app = subprocess.Popen(["/bin/sleep", "2"])
    reaper = threading.Thread(target=app.wait)  # reaped at once: a zombie would look alive
    reaper.start()
    plan = {"start": "up\n", "jlist": [_app("online", app.pid, 0, 0), _app("errored", 0, 3, 0)]}
    assert _follow(tmp_path, plan) == (3, "up\n")
    reaper.join()
    sleeps = tmp_path / "home" / "sleeps"
    assert not sleeps.exists(), f"{len(sleeps.read_text())} naps"
