"""The snapshot a bwrap checkout borrows its objects from (issue 16, `tasks/mirror.py`),
against a hostile agent: it cannot change the snapshot, and cannot read what no branch or
tag of the source reaches. Here so that the ordinary-user run covers it too."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.tasks.test_mirror import git, make_repo, run, snapshots


@pytest.mark.bwrap
@pytest.mark.tmux
def test_the_agent_cannot_change_the_snapshot_or_read_what_no_ref_reaches(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path)
    # A secret committed, then the commit dropped: its blob is still in the source's object
    # store (the old per-task copy of that store carried it into every checkout).
    (repo / "key.txt").write_text("sk-live-amended-away\n")
    git(repo, "add", "key.txt")
    git(repo, "commit", "-qm", "oops")
    blob = git(repo, "rev-parse", "HEAD:key.txt")
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    readme = git(repo, "rev-parse", "HEAD:README")
    script = (
        f"git cat-file -e {blob} && echo blob=readable || echo blob=absent; "
        f"git cat-file -e {readme} && echo readme=readable; "
        "touch /.hal-objects/probe 2>/dev/null && echo write=yes || echo write=no; "
        "for f in $(find /.hal-objects -type f | head -3); do "
        '  chmod 666 "$f" 2>/dev/null && echo chmod=yes; '
        '  echo x >> "$f" 2>/dev/null && echo append=yes; done; '
        "rm -rf /.hal-objects/pack 2>/dev/null; ls /.hal-objects/pack | wc -l"
    )
    task, log = run(tmp_path, repo, script)
    assert task["status"] == "succeeded", task
    assert "blob=absent" in log and "readme=readable" in log
    assert "write=no" in log and "chmod=yes" not in log and "append=yes" not in log
    # Its snapshot is whole: a second task reads every object of it.
    _, log2 = run(tmp_path, repo, "git fsck --connectivity-only --no-progress && echo fsck=ok")
    assert "fsck=ok" in log2, log2
    assert len(snapshots(tmp_path)) == 1  # one snapshot for both tasks
