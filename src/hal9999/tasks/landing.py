"""Landing a fetched result on a branch of the source repository (:mod:`bringback`'s step 5):
the branch moves only from where hal last left it (compare-and-set, remembered in the
session), so a branch the user changed is kept and the result lands on ``hal/<id>-<n>``."""

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from hal9999 import agentfs
from hal9999.errors import RepoError
from hal9999.tasks.gitrepo import git
from hal9999.tasks.session import Session

_ZERO = "0" * 40
_CANDIDATES = 9


class BroughtBack(NamedTuple):
    """Where the result landed in the source repository."""

    branch: str
    head: str
    moved_aside: bool
    """True when the result is not on the task's own branch (see ``why``)."""
    why: str = ""
    """Why the task's own branch was left alone (the user moved it, or a ref is in the way)."""


Owe = Callable[[Callable[[], object]], None]
"""Takes a blocking write the caller makes in its next thread hop, before its next status
write (the record of the branch hal moved, with the run's final status)."""


class Drop:
    """The private ref to delete in the same transaction that moves the branch (one git);
    ``done`` once it is gone."""

    __slots__ = ("done", "ref")

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.done = False


def _load_record(session: Session) -> dict[str, str]:
    try:
        data = json.loads(session.brought_back.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _candidates(branch: str) -> list[list[str]]:
    """Names to try, in families: ``hal/<id>``, ``hal/<id>-2``..., then ``hal-<id>``... for a
    repository where a branch ``hal`` makes every ``hal/...`` impossible."""
    flat = branch.replace("/", "-")
    families = [branch, flat] if flat != branch else [branch]
    return [[name] + [f"{name}-{n}" for n in range(2, _CANDIDATES + 1)] for name in families]


async def _current(repo: Path, name: str) -> str | None:
    try:
        return await git(["rev-parse", "--verify", "--quiet", f"refs/heads/{name}"], cwd=repo)
    except RepoError:
        return None


def note(task_id: str) -> str:
    """The reflog message of a branch move hal makes for task ``task_id``."""
    return f"hal: task result {task_id}"


async def _set_ref(
    repo: Path, name: str, head: str, old: str, drop: Drop, what: str, note: str
) -> None:
    """Point ``refs/heads/NAME`` at ``head`` if it is at ``old`` (zero: if there is none),
    dropping ``drop.ref`` in the same transaction (all or nothing); ``note`` in its reflog."""
    ref = f"refs/heads/{name}"
    script = f"update {ref}\0{head}\0{old}\0delete {drop.ref}\0\0"
    await git(
        ["update-ref", "-m", note, "--stdin", "-z"],
        cwd=repo, what=what, stdin=script.encode(),
    )  # fmt: skip
    drop.done = True


async def _create(repo: Path, name: str, head: str, drop: Drop, note: str) -> bool:
    """Create branch ``name`` at ``head`` only if no such branch exists (compare-and-set
    against none); False when it exists or a ref is in the way (then it is read)."""
    try:
        await _set_ref(repo, name, head, _ZERO, drop, f"creating branch {name}", note)
    except RepoError:
        return False
    return True


async def _left_by(repo: Path, name: str, current: str, note: str) -> bool:
    """Whether the last move of branch ``name`` (its reflog) is this task's, to ``current``:
    a run killed between the move and :func:`_landed` noted nothing, and its branch is no
    one else's (read only then, and only where the repository keeps reflogs)."""
    try:
        last = await git(
            ["log", "-g", "-n", "1", "--format=%H %gs", f"refs/heads/{name}", "--"], cwd=repo
        )
    except RepoError:
        return False
    return last == f"{current} {note}"


async def move_branch(
    repo: Path,
    session: Session,
    branch: str,
    head: str,
    safe: str,
    drop: Drop,
    note: str,
    owe: Owe | None = None,
) -> BroughtBack:
    """Move ``branch`` (or the first free ``hal/<id>-<n>``) to ``head`` by compare-and-set,
    dropping ``drop.ref`` in the same transaction; the record of the move is written here,
    or given to ``owe`` (see :func:`_landed`)."""
    record = _load_record(session)
    last_error = ""
    why = ""
    for family in _candidates(branch):
        for name in family:
            if name not in record and await _create(repo, name, head, drop, note):
                # A name hal never moved, created where none was: one git.
                return await _landed(session, record, name, branch, head, why, owe)
            current = await _current(repo, name)
            if (
                current is not None
                and current != head
                and current != record.get(name)
                and not await _left_by(repo, name, current, note)
            ):
                why = why or f"{branch} was changed outside hal and is left as it is"
                continue  # someone else's commits: never move it
            if current != head:
                try:
                    what = f"creating branch {name}"
                    await _set_ref(repo, name, head, current or _ZERO, drop, what, note)
                except RepoError as exc:
                    last_error = exc.message
                    # A ref in the way of the whole family (e.g. a branch `hal`).
                    why = f"the source repository cannot hold {name} ({exc.message})"
                    break
            return await _landed(session, record, name, branch, head, why, owe)
    raise RepoError(
        f"cannot create a branch for the result in {repo}: {last_error or 'every name is taken'}",
        hint=safe,
    )


async def _landed(
    session: Session,
    record: dict[str, str],
    name: str,
    branch: str,
    head: str,
    why: str,
    owe: Owe | None = None,
) -> BroughtBack:
    """Remember that hal left ``name`` at ``head`` (the next run's compare-and-set): in a
    thread hop of its own, or, given ``owe``, in the caller's next one, which writes it
    (fsynced, as here) before its next status (a task's run: with its final status, one
    hop fewer on the way to its end). A run killed before it noted nothing, as
    one killed between the move and this write always could: the next run reads the
    branch's reflog (:func:`_left_by`), or finds the branch at ``head`` already."""
    record[name] = head
    data = json.dumps(record, indent=1).encode()

    def write() -> None:
        agentfs.write_host_file(session.brought_back, iter([data]))

    if owe is None:
        await asyncio.to_thread(write)
    else:
        owe(write)
    return BroughtBack(name, head, moved_aside=name != branch, why=why)
