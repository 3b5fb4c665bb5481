"""The snapshot a bwrap checkout borrows its objects from (`tasks/mirror.py`),
against a hostile agent: it cannot change the snapshot, and cannot read what no branch or
tag of the source reaches. Here so that the ordinary-user run covers it too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.support.mirror import make_repo, run, snapshots
from tests.tasks.conftest import git


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


def _object(repo: Path, kind: str, data: bytes) -> str:
    import subprocess

    return subprocess.run(
        ["git", "hash-object", "-t", kind, "--literally", "-w", "--stdin"],
        cwd=repo, input=data, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip


def _tree(repo: Path, entries: list[tuple[str, bytes, str]]) -> str:
    data = b"".join(m.encode() + b" " + n + b"\0" + bytes.fromhex(o) for m, n, o in entries)
    return _object(repo, "tree", data)


@pytest.mark.parametrize("shape", ["link-then-dir", "slash-in-name", "dot-git", "dot-git-link"])
async def test_the_checkout_hal_writes_never_writes_outside_it(
    tmp_path: Path, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkout of a snapshot is filled by hal's `read-tree` (not `git clone`): a source
    tree whose entries lead out through a link, or into `.git`, writes nothing outside."""
    from hal9999.errors import RepoError
    from hal9999.tasks import gitdir, gitrepo, mirror

    outside = tmp_path / "outside"
    outside.mkdir()
    repo = make_repo(tmp_path)
    blob = _object(repo, "blob", b"pwned\n")
    link = _object(repo, "blob", str(outside).encode())
    inner = _tree(repo, [("100644", b"pwned", blob)])
    hooks = _tree(repo, [("100755", b"post-checkout", blob)])
    entries = {
        "link-then-dir": [("120000", b"link", link), ("40000", b"link", inner)],
        "slash-in-name": [("120000", b"link", link), ("100644", b"link/pwned", blob)],
        "dot-git": [("40000", b".git", _tree(repo, [("40000", b"hooks", hooks)]))],
        "dot-git-link": [("120000", b".git", link)],
    }[shape]
    commit = git(repo, "commit-tree", _tree(repo, entries), "-p", "HEAD", "-m", shape)
    git(repo, "update-ref", "refs/heads/main", commit)
    session = tmp_path / "session"
    (session / "workspace").mkdir(parents=True)
    snap = await mirror.snapshot_for(tmp_path / "home", str(repo), session, None)
    assert snap is not None
    made: list[bool] = []
    write_git_dir = gitdir._write_git_dir

    def noted(*args: Any) -> tuple[bool, str | None]:
        written = write_git_dir(*args)
        made.append(written[0])
        return written

    monkeypatch.setattr(gitdir, "_write_git_dir", noted)
    source = gitrepo.RepoSource("local", str(repo))
    try:
        await gitrepo.clone(source, None, session / "workspace", "hal/x", borrow=snap)
    except RepoError:
        pass  # git refuses the path: as good
    assert made == [True]  # hal wrote the .git, read-tree filled it
    assert list(outside.iterdir()) == []
    assert not (session / "workspace" / ".git" / "hooks" / "post-checkout").exists()
