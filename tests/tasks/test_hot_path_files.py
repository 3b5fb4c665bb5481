"""The small files a pooled task's run opens through file objects, kept few (the
rest of a task's hot path is pinned in tests/tasks/test_hot_path.py). Counted, not timed."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests import inodes
from tests.support.tasks import git_repo, pooled_service, trivial_request


@pytest.mark.bwrap
async def test_a_pooled_tasks_run_reads_hals_small_files_without_file_objects(
    tmp_path: Path,
) -> None:
    # A file object's open is an fstat, a TCGETS ioctl and lseeks more than
    # os.open's, and its objects; the daemon made ~37 a task, most of them to read a few
    # bytes of hal's own (the keeper's record, the sandbox's, the snapshot's name, refs
    # and notes, the new .git read back, the run's pid file). What is left in a run: the
    # session's notes read back (variable kinds, config, MCP), the agent's log and parsed
    # output followed, the landing's note.
    repo = git_repo(tmp_path / "repo")
    home = tmp_path / "home"
    store, service, _, _ = pooled_service(home, "bwrap")
    for _ in range(2):  # the second finds the snapshot and the pool's sandbox made
        task = await service.create(trivial_request(repo))
        with inodes.buffered_opens(tmp_path) as opened:
            done = await service.run(task.id)
        assert done.status == "succeeded", done.error_message
    store.close()
    read = sorted({p.split("/")[-1] for p in opened})
    assert not {"keeper", "sandbox.json", "current", ".key", "HEAD", "packed-refs"} & set(
        p.split("/")[-1] for p in opened if not p.startswith("repo/")
    ), read
    assert not any(p.startswith("home/mirrors/") or "/.git/" in p.removeprefix("repo/")
                   for p in opened if not p.startswith("repo/")), read  # fmt: skip
    assert len(opened) <= 10, opened  # a pin: lower it when one goes, never raise it
