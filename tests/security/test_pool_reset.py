"""A hostile task on a warm bwrap sandbox leaves nothing for the next task on that sandbox."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.security.conftest import pool_of, session_spec

from hal9999.providers.bwrap.provider import RUN_DIR, BwrapProvider, keeps
from hal9999.providers.host import exec as hostexec
from hal9999.spec import Bind, SandboxSpec, ShellCommand

# pids=256 below needs a cgroup (an ordinary user running the tests has none).
# No cgroup needed: the reset must hold for an ordinary user's hal too (tests/security runs
# again as one in CI), where the sandbox runs as that user and the 000 dirs are its own.
pytestmark = pytest.mark.bwrap

PLANT = r"""
set -u
echo TASK1-SECRET > /tmp/secret
mkdir -p /tmp/zero/deeper && echo TASK1-SECRET > /tmp/zero/deeper/s
chmod 000 /tmp/zero/deeper /tmp/zero
mkdir /tmp/ro && cp /bin/true /tmp/ro/planted && chmod 4755 /tmp/ro/planted && chmod 555 /tmp/ro
cp /bin/true /tmp/.hidden-setuid && chmod 6755 /tmp/.hidden-setuid
echo TASK1-SECRET > /tmp/locked && chmod 000 /tmp/locked
touch /tmp/immutable && (chattr +i /tmp/immutable 2>/dev/null || true)
mkfifo /tmp/fifo
mkdir /tmp/deep && cd /tmp/deep && python3 -c 'import os
for _ in range(1200): os.mkdir("d"); os.chdir("d")
open("secret", "w").write("TASK1-SECRET")' && cd /
ln -s /etc/passwd /tmp/link
mkdir -p /var/tmp/vt && echo TASK1-SECRET > /var/tmp/vt/s
setsid nohup sleep 1000 >/dev/null 2>&1 < /dev/null &
ipcmk -Q >/dev/null && ipcmk -M 4096 >/dev/null
echo planted
"""

LOOK = r"""
find /tmp /var/tmp/ -mindepth 1 2>&1
cat /tmp/secret /tmp/zero/deeper/s /tmp/locked 2>/dev/null
pgrep -a sleep || true
ipcs -q -m | grep -E '^0x' || true
echo looked
"""


def task_spec(root: Path, n: int) -> SandboxSpec:
    """A spec shaped like a task's: its own workspace and home from its session."""
    return session_spec(
        root,
        n,
        Bind(source=Path("home"), target="/home/hal", read_only=False),
        provider="bwrap",
        labels={"hal.task": f"t{n}"},
    )


async def test_the_next_task_on_a_warm_sandbox_sees_nothing_the_last_one_left(
    provider: BwrapProvider, hal_home: Path, tmp_path: Path
) -> None:
    pool = pool_of(provider, hal_home)
    # Warmed first, as the daemon's pool is: task 1 runs on a primed sandbox (with a root
    # hal, in its keeper's namespaces), as task 2 does after the reset.
    assert await pool.warm(task_spec(tmp_path, 0), 1) == 1
    first = await pool.claim(task_spec(tmp_path, 1), task_id="t1")
    try:
        planted = await first.sandbox.exec(ShellCommand(script=PLANT), timeout=30)
        assert planted.text().strip() == "planted", planted.stderr
    finally:
        await pool.release(first)
    second = await pool.claim(task_spec(tmp_path, 2), task_id="t2")
    try:
        assert second.warm and second.sandbox.id == first.sandbox.id, "the same warm sandbox"
        # Host side, before task 2 runs anything: nothing of task 1 in the sandbox's dir, no
        # process of it anywhere.
        directory = provider.store.dir(second.sandbox.id)
        # run/: the record of a root hal's sandbox's keeper (renewed by the reset: task 1's
        # IPC objects, which outlive its processes, are not task 2's). No own home: the
        # session's is bound there; no etc/: the filter and uid switch are the provider's,
        # the account files bwrap's own (inodes less a create).
        own = ["sandbox.json", "tmp"]
        if keeps(provider.store.load(second.sandbox.id)):
            own.append(RUN_DIR)
        assert sorted(p.name for p in directory.iterdir()) == sorted(own)
        assert list((directory / "tmp").iterdir()) == []
        assert (directory / "tmp").stat().st_mode & 0o7777 == 0o1777
        assert hostexec._pids_marked(hostexec.MARKER_VAR, second.sandbox.id) == set()
        cgroup = provider.cgroup(provider.store.load(second.sandbox.id))
        assert cgroup is None or cgroup.pids() == set()
        looked = await second.sandbox.exec(ShellCommand(script=LOOK), timeout=30)
        assert looked.text() == "looked\n", looked.text()
    finally:
        await pool.release(second, reuse=False)
    assert not provider.store.dir(second.sandbox.id).exists()


LEAVE_THE_CGROUP = r"""
for f in /sys/fs/cgroup/tasks /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/*/tasks \
         /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/*/hal9999/tasks; do
  (echo $$ > "$f") 2>/dev/null && echo "moved through $f"
done
mkdir -p /tmp/cg
mount -t cgroup2 none /tmp/cg 2>/dev/null && echo "mounted cgroup2"
mount -t cgroup -o pids none /tmp/cg 2>/dev/null && echo "mounted the pids hierarchy"
unshare -Urm --cgroup sh -c 'mount -t cgroup2 none /tmp/cg && mkdir /tmp/cg/out &&
  echo $$ > /tmp/cg/out/cgroup.procs && echo "nested a cgroup" && exec sleep 1000' 2>/dev/null &
sleep 0.5
setsid nohup sleep 1000 >/dev/null 2>&1 < /dev/null &
echo planted
exec sleep 1000
"""


async def test_a_task_trying_every_way_out_of_its_cgroup_leaves_nothing_after_the_reset(
    provider: BwrapProvider, hal_home: Path, tmp_path: Path
) -> None:
    # A root hal's pool reset kills by the cgroup alone (no scan of every host process for
    # the marker: HostProvider.cgroup_holds_all); that holds only while no process of the
    # sandbox can leave its cgroup or nest one below it. The same user's sandboxes are
    # still scanned, so this holds for them too. The task is still running at the release,
    # as an agent killed at its timeout is (a command that ends takes its PID namespace,
    # and all in it, along).
    pool = pool_of(provider, hal_home)
    first = await pool.claim(task_spec(tmp_path, 1), task_id="t1")
    launch = first.sandbox.launch(ShellCommand(script=LEAVE_THE_CGROUP))
    agent = await asyncio.create_subprocess_exec(
        *launch.argv, env=launch.env, cwd=launch.cwd, stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert agent.stdout is not None
        said = await asyncio.wait_for(agent.stdout.readuntil(b"planted\n"), 30)
        assert said == b"planted\n", said
    finally:
        await pool.release(first)
    try:
        assert await asyncio.wait_for(agent.wait(), 5) != 0
        second = await pool.claim(task_spec(tmp_path, 2), task_id="t2")
        assert second.sandbox.id == first.sandbox.id, "the same warm sandbox"
        assert hostexec._pids_marked(hostexec.MARKER_VAR, second.sandbox.id) == set()
        cgroup = provider.cgroup(provider.store.load(second.sandbox.id))
        assert cgroup is None or cgroup.pids() == set()
        await pool.release(second, reuse=False)
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
