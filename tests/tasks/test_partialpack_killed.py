"""A hal killed (``SIGKILL``) while its git fetched a result into the source repository left
git's ``tmp_pack_*`` there: the next hal that writes into that repository removes it, and
leaves what another process still holds open, or what changed a moment ago."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.tasks.conftest import git, make_repo

from hal9999.tasks.partialpack import MARKER, SETTLED, TEMPORARY, leftovers_cleared

# A hal's fetch of `bundle` into `repo` (the source fetch of bring-back), its git's exec path
# optionally the test's (below), which stalls index-pack half-way through the pack.
HAL = """
import asyncio, sys
from pathlib import Path
from hal9999.tasks import incoming

real = incoming.git
async def git(args, **kw):
    if sys.argv[3]:
        kw["env"] = {**(kw.get("env") or {}), "GIT_EXEC_PATH": sys.argv[3]}
    return await real(args, **kw)
incoming.git = git

async def main():
    repo = Path(sys.argv[1])
    async with incoming._no_partial_pack(repo):
        await incoming._fetch(repo, Path(sys.argv[2]), "hal/t", "refs/hal/incoming", "", None)
asyncio.run(main())
"""

# git runs `git index-pack` from its exec path: this one gets 64 KiB of the pack, then waits.
STALLING_GIT = """#!/bin/sh
export GIT_EXEC_PATH={real} STALLED_BY="$GIT_EXEC_PATH"
[ "$1" = index-pack ] || exec {git} "$@"
{{ head -c 65536; exec sleep 600; }} | exec {git} "$@"
"""


def _bundle(tmp_path: Path) -> tuple[Path, Path, str]:
    """A source repository, a bundle of a branch ``hal/t`` of ~4 MiB it lacks, its head."""
    source = tmp_path / "source"
    make_repo(source, {"a.txt": "one\n"})
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(source), str(work))
    git(work, "checkout", "-qb", "hal/t")
    (work / "big.bin").write_bytes(os.urandom(4 << 20))
    git(work, "add", "-A")
    git(work, "commit", "-qm", "big")
    bundle = tmp_path / "result.bundle"
    git(work, "bundle", "create", "-q", str(bundle), "hal/t", "^main")
    return source, bundle, git(work, "rev-parse", "HEAD")


def _hal(source: Path, bundle: Path, exec_path: str = "") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", HAL, str(source), str(bundle), exec_path],
        start_new_session=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _ours(exec_path: Path) -> list[int]:
    """The processes started with ``exec_path`` as git's, or by its stalling git (this
    test's, nobody else's)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if {f"GIT_EXEC_PATH={exec_path}".encode(), f"STALLED_BY={exec_path}".encode()} & set(
            environ
        ):
            found.append(int(pid))
    return found


def _killed_mid_fetch(tmp_path: Path, source: Path, bundle: Path) -> list[str]:
    """Run a hal fetching ``bundle`` into ``source``, ``SIGKILL`` it (and its git) once git's
    partial pack is there; what it left in ``objects/pack``."""
    stall = tmp_path / "exec"
    stall.mkdir()
    real, binary = git(tmp_path, "--exec-path"), shutil.which("git")
    (stall / "git").write_text(STALLING_GIT.format(real=real, git=binary))
    (stall / "git").chmod(0o755)
    hal = _hal(source, bundle, str(stall))
    pack_dir = source / ".git" / "objects" / "pack"
    try:
        deadline = time.monotonic() + 60
        while not [p for p in pack_dir.glob("tmp_pack_*") if p.stat().st_size > 0]:
            assert hal.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(hal.pid, signal.SIGKILL)
        hal.wait()
        # git, in its own group, and its index-pack die too (the machine's power cut).
        while pids := _ours(stall):
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
    return sorted(p.name for p in pack_dir.iterdir() if p.name.startswith(TEMPORARY))


def _age(objects: Path, seconds: float) -> None:
    """Make the markers and temporary packs in ``objects`` ``seconds`` older."""
    then = time.time() - seconds
    for path in [*objects.glob(f"{MARKER}*"), *(objects / "pack").glob("tmp_*")]:
        os.utime(path, (then, then), follow_symlinks=False)


def test_the_partial_pack_of_a_killed_hal_is_removed_by_the_next(tmp_path: Path) -> None:
    source, bundle, head = _bundle(tmp_path)
    objects = source / ".git" / "objects"
    left = _killed_mid_fetch(tmp_path, source, bundle)
    assert [n for n in left if n.startswith("tmp_pack_")] != []
    assert len(list(objects.glob(f"{MARKER}*"))) == 1
    # A moment later it stays (a user's git may be between closing a pack and renaming it).
    assert leftovers_cleared(objects) == []
    _age(objects, SETTLED + 5)
    # The next hal's fetch lands, and nothing of the killed one's is left.
    assert _hal(source, bundle).wait() == 0
    assert list((objects / "pack").glob("tmp_*")) == []
    assert list(objects.glob(f"{MARKER}*")) == []
    assert git(source, "rev-parse", "refs/hal/incoming") == head
    git(source, "fsck", "--no-progress")


def test_what_a_live_process_holds_a_link_and_a_live_hals_write_stay(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_repo(source, {"a.txt": "one\n"})
    objects = source / ".git" / "objects"
    pack_dir = objects / "pack"
    dead = objects / f"{MARKER}dead"
    dead.write_bytes(b"")
    (pack_dir / "tmp_pack_Dead").write_bytes(b"PACK")
    (pack_dir / "tmp_pack_Held").write_bytes(b"PACK")
    outside = tmp_path / "outside"
    outside.write_bytes(b"not git's")
    (pack_dir / "tmp_pack_Link").symlink_to(outside)
    # A hal still writing: its marker locked (its git holds its own pack open, as Held).
    alive = os.open(objects / f"{MARKER}alive", os.O_CREAT | os.O_WRONLY, 0o600)
    fcntl.flock(alive, fcntl.LOCK_EX)
    holder = subprocess.Popen(
        ["sh", "-c", 'exec 3<"$1"; exec sleep 600', "sh", str(pack_dir / "tmp_pack_Held")]
    )
    try:
        held = Path(f"/proc/{holder.pid}/fd/3")
        while not held.exists():
            time.sleep(0.01)
        _age(objects, SETTLED + 5)
        assert leftovers_cleared(objects) == ["tmp_pack_Dead"]
        left = sorted(p.name for p in pack_dir.iterdir())
    finally:
        os.close(alive)
        holder.kill()
        holder.wait()
    assert left == ["tmp_pack_Held", "tmp_pack_Link"]
    assert outside.read_bytes() == b"not git's"
    # The dead one's marker stays while a file of its window is held: a later hal looks again.
    assert sorted(p.name for p in objects.glob(f"{MARKER}*")) == [f"{MARKER}alive", dead.name]
