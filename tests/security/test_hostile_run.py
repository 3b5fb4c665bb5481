"""``hal run --provider bwrap`` with a hostile custom agent: it looks for every way out the
boundary closed (kernel knobs, host uid 0, nested namespaces, host paths) and reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hal9999.providers.host import user as sandboxuser

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

HOSTILE = r"""#!/bin/sh
# Looks only; changes nothing on the host.
echo "proc-sys-writable=$(find /proc/sys -type f -writable 2>/dev/null | wc -l)"
unshare -U true 2>/dev/null && echo "nested-userns=yes" || echo "nested-userns=no"
python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); \
l.syscall(250, 0, 0); print("keyctl-errno=%d" % ctypes.get_errno())'
echo "env-begin"; env; echo "env-end"
echo "gitconfig-begin"; git config --list; echo "gitconfig-end"
echo "workspace-writable=$(touch /workspace/.probe && rm /workspace/.probe && echo yes)"
echo done > report.txt
"""


def test_a_hostile_agent_finds_the_boundary_closed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hostile.sh").write_text(HOSTILE)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    home = tmp_path / "halhome"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env |= {"HAL_HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HAL_NO_DAEMON": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", "run", "--provider", "bwrap", "--agent",
         "sh hostile.sh", "look around"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    report = out.stdout
    assert "proc-sys-writable=0" in report
    # Whose the agent's files are on the host says which host uid it ran as.
    session = Path(re.findall(r"^session\s+(\S+)$", report, re.MULTILINE)[-1])
    owner = (session / "workspace" / "report.txt").stat().st_uid
    assert owner != 0
    assert owner >= sandboxuser.UID_BASE if os.getuid() == 0 else owner == os.getuid()
    assert "nested-userns=no" in report
    assert "keyctl-errno=1\n" in report  # EPERM
    assert "workspace-writable=yes" in report
    inside = report[report.index("env-begin") : report.index("gitconfig-end")]
    for leak in (str(home), str(tmp_path), "TMUX", str(repo)):
        assert leak not in inside, leak
    branch = subprocess.run(
        ["git", "log", "--format=%H", "-1", "--branches=hal/*"], cwd=repo, capture_output=True,
        text=True, check=True,
    ).stdout  # fmt: skip
    assert branch.strip(), "the work came back on a hal/ branch"
