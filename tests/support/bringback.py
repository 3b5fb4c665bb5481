"""A source repository and a task session, to play the agent's side of bring-back."""

from __future__ import annotations

import hashlib
import subprocess
import zlib
from pathlib import Path

from tests.tasks.conftest import BRANCH, TASK, git, make_repo

from hal9999.redact import SecretMasker
from hal9999.tasks import bringback, gitrepo
from hal9999.tasks.session import Session


class World:
    """A source repository, a task session with its clone, and helpers to play the agent."""

    def __init__(self, root: Path, sessions: Path | None = None) -> None:
        self.source = root / "source"
        self.base = make_repo(self.source, {"a.txt": "one\n"})
        self.session = Session((sessions or root) / "session")
        self.session.create()

    async def clone(self) -> None:
        src = gitrepo.RepoSource("local", str(self.source))
        await gitrepo.clone(src, None, self.session.workspace, BRANCH)

    def agent_commits(self, files: dict[str, str], message: str = "agent work") -> str:
        ws = self.session.workspace
        for name, text in files.items():
            (ws / name).parent.mkdir(parents=True, exist_ok=True)
            (ws / name).write_text(text)
        git(ws, "add", "-A")
        git(ws, "commit", "-qm", message)
        return git(ws, "rev-parse", "HEAD")

    def bundle(self) -> None:
        git(self.session.workspace, "bundle", "create", "-q", str(self.session.bundle),
            f"{self.base}..{BRANCH}")  # fmt: skip

    async def bring_back(self, head: str, masker: SecretMasker | None = None) -> object:
        return await bringback.bring_back(
            gitrepo.RepoSource("local", str(self.source)),
            self.session,
            task_id=TASK,
            branch=BRANCH,
            head=head,
            base=self.base,
            masker=masker or SecretMasker(),
        )


async def cloned_world(tmp_path: Path) -> World:
    """A ``World`` under ``tmp_path`` with the session's clone made."""
    w = World(tmp_path)
    await w.clone()
    return w


def has_object(repo: Path, sha: str) -> bool:
    """Whether ``repo`` holds the object ``sha``."""
    return subprocess.run(["git", "cat-file", "-e", sha], cwd=repo).returncode == 0


def loose_bomb(repo: Path, size: int, piece: bytes = bytes(1 << 20)) -> str:
    """A loose blob of ``size`` bytes, ``piece`` (1 MiB; zeros by default) over and over,
    written straight into ``repo``'s objects (a few kilobytes on disk, as an agent writes one
    without ever holding it); its id."""
    header = b"blob %d\0" % size
    digest, packer = hashlib.sha1(header), zlib.compressobj(9)
    parts = [packer.compress(header)]
    for _ in range(size >> 20):
        digest.update(piece)
        parts.append(packer.compress(piece))
    parts.append(packer.flush())
    oid = digest.hexdigest()
    loose = repo / ".git" / "objects" / oid[:2] / oid[2:]
    loose.parent.mkdir(exist_ok=True)
    loose.write_bytes(b"".join(parts))
    return oid


def mktree(repo: Path, entries: list[tuple[str, str, str]]) -> str:
    """A tree of ``(mode, id, name)`` entries written by ``git mktree`` (which, like git's
    object checks, takes a name of any length)."""
    kinds = {"040000": "tree", "160000": "commit"}
    text = "".join(
        f"{mode} {kinds.get(mode, 'blob')} {oid}\t{name}\n" for mode, oid, name in entries
    )
    done = subprocess.run(["git", "mktree"], cwd=repo, input=text, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def blob(repo: Path, text: str) -> str:
    """Write ``text`` as a blob into ``repo``; its sha."""
    return git_in(repo, text, "hash-object", "-w", "--stdin")


def git_in(repo: Path, text: str, *args: str) -> str:
    """Run git ``args`` in ``repo`` with ``text`` on its stdin; its stdout."""
    done = subprocess.run(["git", *args], cwd=repo, input=text, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def commit_tree(world: World, entries: list[tuple[str, str, str]]) -> str:
    """A commit on the task's branch whose top tree is the base's files plus ``entries``."""
    ws = world.session.workspace
    top = [("100644", git(ws, "rev-parse", "HEAD:a.txt"), "a.txt"), *entries]
    commit = git(ws, "commit-tree", mktree(ws, top), "-p", "HEAD", "-m", "agent work")
    git(ws, "update-ref", f"refs/heads/{BRANCH}", commit)
    world.bundle()
    return commit


def _snapshot_repo(root: Path, *, detached: bool = False) -> tuple[Path, Path]:
    """A source with branches (one nested), a light and an annotated tag, an executable
    file and a symlink; and a snapshot of it made as mirror.py makes them."""
    source = root / "source"
    source.mkdir()
    git(source, "init", "-q", "-b", "main")
    (source / "a.txt").write_text("one\n")
    (source / "bin").mkdir()
    (source / "bin" / "run").write_text("#!/bin/sh\n")
    (source / "bin" / "run").chmod(0o755)
    (source / "link").symlink_to("a.txt")
    git(source, "add", "-A")
    git(source, "commit", "-qm", "initial")
    git(source, "tag", "v1")
    git(source, "tag", "-a", "-m", "annotated", "v2")
    git(source, "branch", "side")
    git(source, "branch", "feat/x")
    (source / "a.txt").write_text("two\n")
    git(source, "commit", "-qam", "second")
    if detached:
        git(source, "checkout", "-q", "--detach", "HEAD~1")
    snap = root / "snap"
    git(root, "clone", "-q", "--bare", "--no-hardlinks", "--", str(source), str(snap))
    return source, snap
