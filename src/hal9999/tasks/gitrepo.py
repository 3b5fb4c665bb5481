"""Git work around a task on the host: the source and the session checkout.

Trust boundary: once an agent has run, the checkout is untrusted (its ``.git/config`` could
name hooks, filters or an fsmonitor that git would run). So everything that touches the
checkout after the agent runs happens *inside the sandbox* (:mod:`hal9999.tasks.collect`),
and the host only reads the result as a git bundle, a plain file that carries no
configuration (:mod:`hal9999.tasks.bringback`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hal9999.errors import RepoError
from hal9999.procs import kill_group_until_gone
from hal9999.providers.base import Sandbox
from hal9999.spec import ArgvCommand

_URL = re.compile(r"^([a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)", re.IGNORECASE)
# Host-side git never runs repository hooks and never prompts for credentials. No
# `protocol.file.allow=always`: a repository's `.gitmodules` must never make host git copy
# another host repository (git's default allows local paths only for the user's own command).
_GIT_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
# How much of git's stderr an error keeps: the whole relevant message, never megabytes.
_ERROR_LINES = 12
_ERROR_CHARS = 1500
# `clone -c` writes these into the new checkout's config: the agent commits as hal9999.
_CLONE_IDENTITY = ["-c", "user.name=hal9999", "-c", "user.email=hal9999@localhost"]


@dataclass(frozen=True)
class RepoSource:
    """Where a task's repository comes from."""

    kind: Literal["local", "url"]
    location: str
    """An absolute path (the repository's top level) or a URL."""


async def git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    what: str = "git",
    hint: str | None = None,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run host git (with ``stdin`` as its input, ``env`` added to its environment); raise
    :class:`RepoError` with git's own message on failure."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *_GIT_SAFE,
            *args,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={
                "GIT_TERMINAL_PROMPT": "0",
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": "/",
                **(env or {}),
            },
            # Its own process group: git's helpers (git-remote-http, ssh) die with it.
            start_new_session=True,
        )
    except OSError as exc:
        # A directory that moved or vanished (the source repository, say) is a repository
        # problem with a clear message, not a traceback that leaves the task half-collected.
        place = f" in {cwd}" if cwd is not None else ""
        raise RepoError(
            f"{what} failed: cannot run git{place}: {exc.strerror or exc}",
            hint="check that the directory still exists; was the repository moved?",
        ) from exc
    try:
        out, err = await proc.communicate(stdin)
    except BaseException:
        # Cancelled (a timeout, Ctrl-C, SIGTERM): a clone stuck on the network must not
        # outlive the task.
        await kill_group_until_gone(proc)
        raise
    if proc.returncode != 0:
        raise RepoError(f"{what} failed: {git_message(err)}", hint=hint)
    return out.decode("utf-8", "replace").strip()


def git_message(stderr: bytes) -> str:
    """Git's whole relevant message on one line (its last lines, bounded; hint lines kept)."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line][-_ERROR_LINES:]
    text = "; ".join(lines) or "git exited with an error and printed nothing"
    return text if len(text) <= _ERROR_CHARS else "..." + text[-_ERROR_CHARS:]


async def resolve_source(repo: str | None, cwd: Path) -> RepoSource:
    """Turn ``--repo`` (a path, a URL, or nothing for the current directory) into a source."""
    found = _source_or_path(repo, cwd)
    if isinstance(found, RepoSource):
        return found
    top = await asyncio.to_thread(_plain_top, found)
    return RepoSource("local", top) if top else await _git_top(found)


def resolve_source_blocking(repo: str | None, cwd: Path) -> RepoSource:
    """:func:`resolve_source` for a caller already in a worker thread (the daemon's create):
    the plain layout is read right here, without an event loop and a thread of its own."""
    found = _source_or_path(repo, cwd)
    if isinstance(found, RepoSource):
        return found
    top = _plain_top(found)
    return RepoSource("local", top) if top else asyncio.run(_git_top(found))


def _source_or_path(repo: str | None, cwd: Path) -> RepoSource | Path:
    """A URL's source, or the existing directory a local ``--repo`` (or ``cwd``) names."""
    if repo and _URL.match(repo):
        return RepoSource("url", repo)
    try:
        path = (cwd / repo).resolve() if repo else cwd.resolve()
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long, ...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RepoError(
            f"cannot use --repo {repo or cwd}: {reason}",
            hint="pass --repo with a path to a git repository or a git URL",
        ) from exc
    if not exists:
        raise RepoError(
            f"repository path does not exist: {path}",
            hint="pass --repo with a path to a git repository or a git URL",
        )
    if not is_dir:
        raise RepoError(
            f"--repo names a file, not a repository: {path}",
            hint="pass --repo with the repository's directory or a git URL",
        )
    return path


async def _git_top(path: Path) -> RepoSource:
    """The source at ``path`` as git finds its top level (any layout :func:`_plain_top`
    leaves to git)."""
    try:
        top = await git(["rev-parse", "--show-toplevel"], cwd=path, what="finding the repository")
    except RepoError:
        if await _is_bare(path):
            raise RepoError(
                f"{path} is a bare repository (it has no working tree to start from)",
                hint=f"pass --repo file://{path} to work from a clone of it, or use a checkout",
            ) from None
        raise RepoError(
            f"not a git repository: {path}",
            hint="run hal inside a git repository, or pass --repo PATH|URL",
        ) from None
    return RepoSource("local", top)


# A key may follow its section's header on the same line; extensions.worktreeConfig has git
# read config.worktree too, which may set core.worktree.
_CONFIG_ASIDE = re.compile(
    r"^\s*(?:\[[^\]\n]*\]\s*)?(worktree\b|worktreeconfig\b|bare\b(?!\s*=\s*false\s*$)|\[include)",
    re.I | re.M,
)


def _plain_top(path: Path) -> str | None:
    """What ``git rev-parse --show-toplevel`` says in ``path`` (resolved), found without
    git for the plain layout only (issue 16: one host git fewer per task): the nearest
    directory up from ``path``, on its filesystem, whose ``.git`` is a repository directory
    of the current user with no ``core.worktree``, ``core.bare`` or includes in its config.
    None for anything else (a ``.git`` file, a bare repository, another owner, ...): git
    answers then, with its own errors."""
    uid = os.geteuid()
    try:
        device = path.stat().st_dev
        for top in (path, *path.parents):
            info = top.stat()
            if info.st_dev != device:
                return None  # git stops at a filesystem boundary
            dot = top / ".git"
            try:
                dot_info = os.lstat(dot)
            except FileNotFoundError:
                if (top / "HEAD").exists() or (top / "objects").exists():
                    return None  # maybe a bare repository
                continue
            if not stat.S_ISDIR(dot_info.st_mode) or info.st_uid != uid or dot_info.st_uid != uid:
                return None
            head = (dot / "HEAD").read_text()
            if not (head.startswith("ref: refs/") or _COMMIT.fullmatch(head.strip())):
                return None
            if not (dot / "objects").is_dir() or not (dot / "refs").is_dir():
                return None
            if (dot / "commondir").exists() or _CONFIG_ASIDE.search((dot / "config").read_text()):
                return None
            return str(top)
    except (OSError, UnicodeDecodeError):
        return None
    return None


def check_ref(ref: str) -> str:
    """``ref`` if it can only ever be read as a revision (never as an option of git)."""
    if not ref or ref.startswith("-") or any(ord(c) < 0x20 or c == "\x7f" for c in ref):
        raise RepoError(
            f"invalid --ref {ref!r}: a ref is a branch, tag or commit and cannot start with '-'",
            hint="pass --ref with an existing branch, tag or commit",
        )
    return ref


async def _is_bare(path: Path) -> bool:
    try:
        return await git(["rev-parse", "--is-bare-repository"], cwd=path) == "true"
    except RepoError:
        return False


async def clone(
    source: RepoSource,
    ref: str | None,
    dest: Path,
    branch: str,
    *,
    borrow: Path | None = None,
    alternates: str | None = None,
) -> str:
    """Clone ``source`` at ``ref`` into ``dest`` on a new ``branch``; return the base commit.

    With ``borrow`` (a snapshot of the local source, :mod:`hal9999.tasks.mirror`) the clone
    is ``--shared`` from it: its objects stay in the snapshot (the caller points the
    checkout's alternates at the session's link; a ``.git`` hal writes itself names
    ``alternates`` there at once when given, a file fewer). The checkout keeps no host path: a local
    source's path is removed from the remote and from the reflog the clone wrote, so the
    agent does not learn where the host keeps it.
    """
    location = source.location
    if ref is not None:
        check_ref(ref)
    # A snapshot is hal's own bare clone in a form hal knows: its checkout's .git is written
    # here and one `read-tree` fills the index and work tree (issue 16: `clone --shared` was
    # git, sh and git-upload-pack), with git's clone for anything else.
    written = borrow is not None and await asyncio.to_thread(
        _write_git_dir, borrow, dest, alternates
    )
    if not written:
        if borrow is not None:
            how, origin = "--shared", str(borrow)
        else:
            how, origin = "--no-hardlinks", location
        await git(
            ["clone", "--quiet", how, *_CLONE_IDENTITY, "--", origin, str(dest)],
            what=f"cloning {location}",
        )
    # dest itself may already belong to the sandbox's own uid (hal as root); what is in it
    # was just made by this clone, so host git may work there.
    here = ["-c", f"safe.directory={dest}"]
    if ref:
        for candidate in (ref, f"origin/{ref}"):
            try:
                commit = await git(
                    [
                        *here,
                        "rev-parse",
                        "--verify",
                        "--quiet",
                        "--end-of-options",
                        f"{candidate}^{{commit}}",
                    ],
                    cwd=dest,
                )
            except RepoError:
                continue
            if written:  # nothing is checked out yet: HEAD is only named
                await asyncio.to_thread(_rewrite_head, dest / ".git", f"{commit}\n")
                break
            await git(
                [*here, "checkout", "--quiet", "--detach", commit],
                cwd=dest,
                what=f"checking out {ref}",
            )
            break
        else:
            raise RepoError(
                f"ref {ref!r} not found in {location}",
                hint="pass --ref with an existing branch, tag or commit",
            )
    # The clone is host git's own, no agent has run: its config and refs are read and edited
    # here rather than by three more git processes (issue 16), with git as the fallback for
    # anything not in the plain form this git writes.
    git_dir = dest / ".git"
    if not await asyncio.to_thread(_new_branch, git_dir, branch):
        await git(
            [*here, "checkout", "--quiet", "-b", branch], cwd=dest, what="creating the branch"
        )
    if written:  # the index and the work tree of HEAD, the branch
        await git([*here, "read-tree", "-u", "--reset", "HEAD"], cwd=dest, what="checking out")
    elif source.kind == "local" and not await asyncio.to_thread(_forget_origin_url, git_dir):
        await git(
            [*here, "config", "--unset-all", "remote.origin.url"],
            cwd=dest,
            what="hiding the source",
        )
    head: str | None = await asyncio.to_thread(_drop_reflogs, git_dir, branch)
    return head or await git([*here, "rev-parse", "HEAD"], cwd=dest)


def _drop_reflogs(git_dir: Path, branch: str) -> str | None:
    """Remove the reflogs (they hold the source's path) and return :func:`_branch_commit`,
    in one thread hop."""
    shutil.rmtree(git_dir / "logs", True)
    return _branch_commit(git_dir, branch)


_SNAPSHOT_REF = re.compile(r"([0-9a-f]{40}) refs/(heads|tags)/(\S+)")
_PACKED_HEADER = "# pack-refs with: peeled fully-peeled sorted \n"
_EXCLUDE = (
    "# git ls-files --others --exclude-from=.git/info/exclude\n"
    "# Lines that start with '#' are comments.\n"
    "# For a project mostly in C, the following would skip object files and executables:\n"
    "# *.[oa]\n"
    "# *~\n"
)


def _write_git_dir(snap: Path, dest: Path, alternates: str | None = None) -> bool:
    """Write into the empty ``dest`` the ``.git`` that ``git clone --shared SNAP`` writes
    (the clone's identity, no origin URL, no reflogs, no sample hooks; its alternates entry
    ``alternates`` when given), with nothing checked out; False, leaving ``dest`` empty,
    when the snapshot is not in the form hal's snapshots have (refs all packed, branches and
    tags only, HEAD a packed branch or a commit)."""
    try:
        if os.listdir(dest) or os.listdir(snap / "refs" / "heads"):
            return False
        if os.listdir(snap / "refs" / "tags"):
            return False
        head = (snap / "HEAD").read_text()
        lines = (snap / "packed-refs").read_text().splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return False
    if not lines or lines[0] != _PACKED_HEADER:
        return False
    remotes: list[str] = []
    tags: list[str] = []
    heads: dict[str, str] = {}
    last: list[str] | None = None
    for line in lines[1:]:
        if line.startswith("^") and last is tags and _COMMIT.fullmatch(line[1:].rstrip("\n")):
            tags.append(line)  # an annotated tag's peeled commit, after the tag
            last = None
            continue
        match = _SNAPSHOT_REF.fullmatch(line.rstrip("\n"))
        if match is None or not line.endswith("\n"):
            return False
        commit, kind, name = match.groups()
        if kind == "heads":
            heads[name] = commit
            remotes.append(f"{commit} refs/remotes/origin/{name}\n")
            last = remotes
        else:
            tags.append(line)
            last = tags
    if head.startswith("ref: refs/heads/"):
        default: str | None = head[len("ref: refs/heads/") :].rstrip("\n")
        if default not in heads or not _PLAIN_BRANCH.fullmatch(default):
            return False
        local = heads[default]
    elif _COMMIT.fullmatch(head.rstrip("\n")):
        default, local = None, head.rstrip("\n")
    else:
        return False
    config = (
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
        "\tlogallrefupdates = true\n[user]\n\tname = hal9999\n\temail = hal9999@localhost\n"
        '[remote "origin"]\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'
    )
    git_dir = dest / ".git"
    try:
        for sub in ("objects/info", "objects/pack", "refs/heads", "refs/tags", "info", "hooks"):
            (git_dir / sub).mkdir(parents=True)
        entry = alternates or f"{snap / 'objects'}\n"
        (git_dir / "objects" / "info" / "alternates").write_text(entry)
        (git_dir / "info" / "exclude").write_text(_EXCLUDE)
        (git_dir / "packed-refs").write_text(_PACKED_HEADER + "".join(remotes + tags))
        if default is not None:
            branch_ref = git_dir / "refs" / "heads" / default
            branch_ref.parent.mkdir(parents=True, exist_ok=True)
            branch_ref.write_text(f"{local}\n")
            origin_head = git_dir / "refs" / "remotes" / "origin" / "HEAD"
            origin_head.parent.mkdir(parents=True)
            origin_head.write_text(f"ref: refs/remotes/origin/{default}\n")
            config += f'[branch "{default}"]\n\tremote = origin\n\tmerge = refs/heads/{default}\n'
        (git_dir / "config").write_text(config)
        (git_dir / "HEAD").write_text(f"ref: refs/heads/{default}\n" if default else f"{local}\n")
    except OSError:
        shutil.rmtree(git_dir, ignore_errors=True)
        return False
    return True


_ORIGIN = '[remote "origin"]'
_URL_KEY = re.compile(r"\s*url\s*=", re.IGNORECASE)
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _forget_origin_url(git_dir: Path) -> bool:
    """Drop ``remote.origin.url`` from a fresh clone's config, as git writes it (one
    ``url = ...`` line in a ``[remote "origin"]`` section); False, leaving the file as it
    was, for anything else (git then does it)."""
    path = git_dir / "config"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    kept: list[str] = []
    dropped = 0
    section = ""
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        if section == _ORIGIN and _URL_KEY.match(line):
            dropped += 1
            continue
        if section.startswith(_ORIGIN[:-1]) and section != _ORIGIN:
            return False  # `[remote "origin" ...]` in another spelling: not git's own form
        kept.append(line)
    if dropped != 1 or "\\\n" in text:  # a continued value: not a line-per-key file
        return False
    with path.open("r+") as file:  # in place: the file keeps its owner and mode
        file.write("".join(kept))
        file.truncate()
    return True


_PLAIN_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:/[A-Za-z0-9_][A-Za-z0-9_-]*)*")


def _new_branch(git_dir: Path, branch: str) -> bool:
    """What ``git checkout -b BRANCH`` does in a fresh clone, whose HEAD is a branch or a
    commit: a loose ref at HEAD's commit, then HEAD naming it (the tree and index stay).
    False, with nothing changed, for anything not in that plain form (a name git might
    refuse, a ref in the way, packed local branches, reftable): git does it then."""
    if not _PLAIN_BRANCH.fullmatch(branch):
        return False
    heads = git_dir / "refs" / "heads"
    try:
        head = (git_dir / "HEAD").read_text()
        packed = git_dir / "packed-refs"
        if packed.exists() and " refs/heads/" in packed.read_text():
            return False
        if head.startswith("ref: refs/heads/"):
            name = head[len("ref: refs/heads/") :].rstrip("\n")
            if not _PLAIN_BRANCH.fullmatch(name):
                return False
            commit = (heads / name).read_text().rstrip("\n")
        else:
            commit = head.rstrip("\n")
        if not _COMMIT.fullmatch(commit):
            return False
        # Neither the branch nor a ref that is a directory of its name or a file on its path.
        ref = heads / branch
        parents = [heads.joinpath(*branch.split("/")[:n]) for n in range(1, branch.count("/") + 1)]
        if os.path.lexists(ref) or any(p.exists() and not p.is_dir() for p in parents):
            return False
        ref.parent.mkdir(parents=True, exist_ok=True)
        _write_new(ref, f"{commit}\n")
    except (OSError, UnicodeDecodeError):
        return False
    try:
        _rewrite_head(git_dir, f"ref: refs/heads/{branch}\n")
    except OSError:
        ref.unlink(missing_ok=True)  # as it was: git makes the branch
        return False
    return True


def _rewrite_head(git_dir: Path, text: str) -> None:
    """Write HEAD in place, not through a lock file renamed over it (a new inode, and a freed
    one, per task: dear on ext4 without a journal, issue 16). Only a fresh checkout's HEAD,
    before any agent or other git runs there: a clone cut short is emptied and made again
    (its task has no base commit yet), so a torn write cannot outlive it."""
    with (git_dir / "HEAD").open("r+") as head:
        head.write(text)
        head.truncate()


def _write_new(path: Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text`` (written aside, then renamed, as git does)."""
    tmp = path.with_name(f"{path.name}.lock")
    try:
        with tmp.open("x") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _branch_commit(git_dir: Path, branch: str) -> str | None:
    """The commit of the branch ``checkout -b`` just made and HEAD names, from its loose ref
    (None when the refs are kept otherwise, e.g. reftable: git is asked then)."""
    try:
        head = (git_dir / "HEAD").read_text().strip()
        commit = (git_dir / "refs" / "heads" / branch).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if head != f"ref: refs/heads/{branch}" or not _COMMIT.fullmatch(commit):
        return None
    return commit


SUBMODULES_SCRIPT = r"""
set -eu
[ -f .gitmodules ] || exit 0
git -c core.hooksPath=/dev/null -c protocol.file.allow=never -c protocol.ext.allow=never \
  submodule update --init --recursive >&2
"""
"""Submodules are fetched inside the sandbox, over the network it has: a repository controls
``.gitmodules``, and host git would copy any host repository it names (``file`` transport is
refused here too, so a local path names nothing)."""


async def init_submodules(sandbox: Sandbox) -> str | None:
    """Check out the repository's submodules inside the sandbox; a warning when that fails
    (the task goes on; work dropped into a missing submodule fails collection loudly)."""
    command = ArgvCommand(
        argv=("sh", "-c", SUBMODULES_SCRIPT, "hal-submodules"),
        cwd=sandbox.workdir,
        env={"GIT_TERMINAL_PROMPT": "0"},
    )
    result = await sandbox.exec(command, timeout=300)
    if result.ok:
        return None
    return (
        f"the repository's submodules could not be fetched inside the sandbox "
        f"({git_message(result.stderr)}); they stay empty, and files the agent writes into "
        "them cannot be brought back"
    )
