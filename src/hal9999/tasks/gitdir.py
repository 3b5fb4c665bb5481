"""A repository's ``.git`` read and written by hal itself, where git would take a process.

Each function here handles only the plain form host git writes (loose or packed refs as a
fresh clone has them, a config of one line per key) and says so when it meets anything else
(``None`` or ``False``, nothing changed), where :mod:`gitrepo` runs git instead: this keeps
host git processes off every task's path. Only on the host's own source (read)
and on a fresh checkout before any agent ran (written): an agent's checkout is untrusted and
never read here (see :mod:`gitrepo`).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

from hal9999 import fs
from hal9999.hostread import read_text, write_text

# A key may follow its section's header on the same line; extensions.worktreeConfig has git
# read config.worktree too, which may set core.worktree.
_CONFIG_ASIDE = re.compile(
    r"^\s*(?:\[[^\]\n]*\]\s*)?(worktree\b|worktreeconfig\b|bare\b(?!\s*=\s*false\s*$)|\[include)",
    re.I | re.M,
)


def plain_top(path: Path) -> str | None:
    """What ``git rev-parse --show-toplevel`` says in ``path`` (resolved), found without
    git for the plain layout only (one host git fewer per task): the nearest
    directory up from ``path``, on its filesystem, whose ``.git`` is a repository directory
    of the current user with no ``core.worktree``, ``core.bare`` or includes in its config.
    None for anything else (a ``.git`` file, a bare repository, another owner, ...): git
    answers then, with its own errors."""
    uid = os.geteuid()
    try:
        first = path.stat()
        device = first.st_dev
        for top in (path, *path.parents):
            info = first if top is path else top.stat()
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


def drop_reflogs(git_dir: Path, branch: str) -> str | None:
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


def write_git_dir(snap: Path, dest: Path, alternates: str | None = None) -> bool:
    """Write into the empty ``dest`` the ``.git`` that ``git clone --shared SNAP`` writes
    (the clone's identity, no origin URL, no reflogs, none of its empty directories but
    objects/info/, refs/ and info/, its local branch packed; its alternates entry
    ``alternates`` when given), with nothing checked out; False, leaving ``dest`` empty,
    when the snapshot is not in the form hal's snapshots have (refs all packed, branches and
    tags only, HEAD a packed branch or a commit)."""
    return _write_git_dir(snap, dest, alternates, None)[0]


def write_branched_git_dir(
    snap: Path, dest: Path, alternates: str | None, branch: str
) -> tuple[bool, bool, str | None]:
    """:func:`write_git_dir` and :func:`new_branch` (packed) in one thread hop where a clone
    of ``snap`` at its HEAD would take three, each file written once with what it ends up
    holding (the branch's step does not read back and rewrite the packed-refs and HEAD just
    written, nor the commit's read them again): whether the ``.git`` was written, whether
    the branch was made, and its commit (None when it was not). Nothing is read or checked
    out: the caller's ``read-tree`` fills the index and the work tree."""
    written, commit = _write_git_dir(snap, dest, alternates, branch)
    return written, commit is not None, commit


def _write_git_dir(
    snap: Path, dest: Path, alternates: str | None, branch: str | None
) -> tuple[bool, str | None]:
    """:func:`write_git_dir`, with ``branch`` (when given, and one :func:`new_branch` would
    pack: a plain name no packed ref is in the way of) made at HEAD's commit and HEAD
    naming it; whether the ``.git`` was written, and the branch's commit when it was made."""
    try:
        if os.listdir(dest) or os.listdir(snap / "refs" / "heads"):
            return False, None
        if os.listdir(snap / "refs" / "tags"):
            return False, None
        head = read_text(snap / "HEAD")
        lines = read_text(snap / "packed-refs").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return False, None
    if not lines or lines[0] != _PACKED_HEADER:
        return False, None
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
            return False, None
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
            return False, None
        local = heads[default]
    elif _COMMIT.fullmatch(head.rstrip("\n")):
        default, local = None, head.rstrip("\n")
    else:
        return False, None
    config = (
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
        "\tlogallrefupdates = true\n[user]\n\tname = hal9999\n\temail = hal9999@localhost\n"
        '[remote "origin"]\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'
    )
    # The local branch packed too, not a loose file (an inode a task); the new
    # branch beside it. Each ref is packed with its name as git sorts them.
    packed = [] if default is None else [f"{local} refs/heads/{default}\n"]
    packed += remotes + tags
    made = None
    if branch is not None and _packable(branch, [line.split(" ")[1][:-1] for line in packed
                                                 if line[0] != "^"]):  # fmt: skip
        made = f"refs/heads/{branch}"
        at = next(
            (n for n, line in enumerate(packed) if line[0] != "^" and line.split(" ")[1] > made),
            len(packed),
        )  # a peeled line stays after its tag
        packed.insert(at, f"{local} {made}\n")
    git_dir = dest / ".git"
    try:
        # Not git's empty hooks/, objects/pack/, refs/heads/ and refs/tags/ (the branches
        # are packed): git needs none of them (only objects/, refs/ and HEAD) and makes each
        # when it first writes there (four inodes a task, each dear on some hosts).
        for sub in ("objects/info", "refs", "info"):
            (git_dir / sub).mkdir(parents=True)
        entry = alternates or f"{snap / 'objects'}\n"
        write_text(git_dir / "objects" / "info" / "alternates", entry)
        write_text(git_dir / "info" / "exclude", _EXCLUDE)
        write_text(git_dir / "packed-refs", _PACKED_HEADER + "".join(packed))
        if default is not None:
            origin_head = git_dir / "refs" / "remotes" / "origin" / "HEAD"
            origin_head.parent.mkdir(parents=True)
            write_text(origin_head, f"ref: refs/remotes/origin/{default}\n")
            config += f'[branch "{default}"]\n\tremote = origin\n\tmerge = refs/heads/{default}\n'
        write_text(git_dir / "config", config)
        named = made or (f"refs/heads/{default}" if default else None)
        write_text(git_dir / "HEAD", f"ref: {named}\n" if named else f"{local}\n")
    except OSError:
        shutil.rmtree(git_dir, ignore_errors=True)
        return False, None
    return True, local if made else None


def _packable(branch: str, refs: list[str]) -> bool:
    """Whether :func:`new_branch` packs ``branch`` beside ``refs``: a plain name, and neither
    it nor a ref on its path or below its name taken."""
    name = f"refs/heads/{branch}"
    return _PLAIN_BRANCH.fullmatch(branch) is not None and not any(
        ref == name or ref.startswith(name + "/") or name.startswith(ref + "/") for ref in refs
    )


_ORIGIN = '[remote "origin"]'
_URL_KEY = r"(?i)\s*url\s*="  # a clone from a URL's; compiled on first use
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def forget_origin_url(git_dir: Path) -> bool:
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
        if section == _ORIGIN and re.match(_URL_KEY, line):
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


def new_branch(git_dir: Path, branch: str, pack: bool = False) -> bool:
    """What ``git checkout -b BRANCH`` does in a fresh clone, whose HEAD is a branch or a
    commit: a loose ref at HEAD's commit, then HEAD naming it (the tree and index stay).
    False, with nothing changed, for anything not in that plain form (a name git might
    refuse, a ref in the way, packed local branches, reftable): git does it then.

    ``pack``: the ``.git`` is one :func:`write_git_dir` wrote (its local branch packed),
    and the new branch is packed beside it, written in place like :func:`rewrite_head`: no
    loose ref and no directory for its name's parts (two inodes a task)."""
    if not _PLAIN_BRANCH.fullmatch(branch):
        return False
    if pack:
        return _new_packed_branch(git_dir, branch)
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
        rewrite_head(git_dir, f"ref: refs/heads/{branch}\n")
    except OSError:
        ref.unlink(missing_ok=True)  # as it was: git makes the branch
        return False
    return True


def _packed_refs(git_dir: Path) -> tuple[list[str], dict[str, str]] | None:
    """The lines of ``packed-refs`` and each ref's object, when it is in git's plain form
    (its header, one ``OBJECT REF`` a line, a tag's peeled ``^COMMIT`` after it)."""
    try:
        lines = (git_dir / "packed-refs").read_text().splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or lines[0] != _PACKED_HEADER:
        return None
    refs: dict[str, str] = {}
    for line in lines[1:]:
        if not line.endswith("\n"):
            return None
        if line.startswith("^") and _COMMIT.fullmatch(line[1:-1]):
            continue
        words = line[:-1].split(" ")
        if len(words) != 2 or not _COMMIT.fullmatch(words[0]) or not words[1].startswith("refs/"):
            return None
        refs[words[1]] = words[0]
    return lines, refs


def _new_packed_branch(git_dir: Path, branch: str) -> bool:
    packed = _packed_refs(git_dir)
    if packed is None:
        return False
    lines, refs = packed
    name = f"refs/heads/{branch}"
    try:
        head = (git_dir / "HEAD").read_text()
        loose = git_dir / name
        parents = [loose.parents[n] for n in range(branch.count("/"))]
        if os.path.lexists(loose) or any(p.exists() and not p.is_dir() for p in parents):
            return False
    except (OSError, UnicodeDecodeError):
        return False
    if head.startswith("ref: refs/heads/"):
        commit = refs.get(head[len("ref: ") :].rstrip("\n"), "")
    else:
        commit = head.rstrip("\n")
    if not _COMMIT.fullmatch(commit):
        return False
    # Neither the branch nor a packed ref that is a directory of its name or on its path.
    if any(ref == name or ref.startswith(name + "/") or name.startswith(ref + "/") for ref in refs):
        return False
    at = next(
        (n for n, line in enumerate(lines) if n and line[0] != "^" and line.split(" ")[1] > name),
        len(lines),
    )  # git keeps them sorted by name; a peeled line stays after its tag
    try:
        _rewrite(git_dir / "packed-refs", "".join([*lines[:at], f"{commit} {name}\n", *lines[at:]]))
    except OSError:
        return False
    try:
        rewrite_head(git_dir, f"ref: {name}\n")
    except OSError:
        _rewrite(git_dir / "packed-refs", "".join(lines))  # as it was: git makes the branch
        return False
    return True


def _rewrite(path: Path, text: str) -> None:
    with path.open("r+") as file:
        file.write(text)
        file.truncate()


def rewrite_head(git_dir: Path, text: str) -> None:
    """Write HEAD in place, not through a lock file renamed over it (a new inode, and a freed
    one, per task: dear on ext4 without a journal). Only a fresh checkout's HEAD,
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
        fs.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _branch_commit(git_dir: Path, branch: str) -> str | None:
    """The commit of the branch ``checkout -b`` just made and HEAD names, from its loose ref
    (None when the refs are kept otherwise, e.g. reftable: git is asked then)."""
    try:
        head = (git_dir / "HEAD").read_text().strip()
        try:
            commit = (git_dir / "refs" / "heads" / branch).read_text().strip()
        except FileNotFoundError:
            packed = _packed_refs(git_dir)  # a .git hal wrote: the branch is packed
            commit = "" if packed is None else packed[1].get(f"refs/heads/{branch}", "")
    except (OSError, UnicodeDecodeError):
        return None
    if head != f"ref: refs/heads/{branch}" or not _COMMIT.fullmatch(commit):
        return None
    return commit
