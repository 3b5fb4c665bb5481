"""Named agents: their durable state directory on the host, and spawn/stop/start/rm.

::

    <home>/agents/<name>/
      role.md        the role prompt (given at spawn, or the default)
      mailbox.jsonl  the mailbox ledger: every message handed to the agent, once
      cursor         how many ledger entries the agent's finished turns have taken
      mailbox.lock   flocked while the ledger is appended to or scrubbed (retention)
      repo/          the agent's own repository, when it was spawned without --repo

The agent's long-lived session (workspace on branch ``hal/agent/<name>``, the agent CLI's
home with its own session, so ``claude -p --resume`` continues) is its task's session:
every turn resumes that one task. Only the host writes this directory; no sandbox sees it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
import time
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hal9999 import agentfs
from hal9999.agents.registry import resolve_agent
from hal9999.config import HalConfig
from hal9999.errors import HiveError
from hal9999.events.hive import AgentState, HiveEvent
from hal9999.hive import broker
from hal9999.hive.broker import Message
from hal9999.hive.store import (
    AgentPolicy,
    AgentRecord,
    InTransaction,
    check_name,
    delete_agent,
    get_agent,
    insert_agent,
    insert_hive_event,
    record_hive_event,
    update_agent,
)
from hal9999.store import Store
from hal9999.tasks import gitrepo
from hal9999.tasks.plugins import load_provider_for

DEFAULT_ROLE = """\
You are {name}, a long-lived agent in a hive run by hal. You wake when something arrives in
your mailbox (a message from the operator or another agent, an answer, an approval result,
a reminder); each wake-up is one turn, and the new items are your prompt. Your workspace and
your notes persist between turns: keep durable notes in NOTES.md of your workspace. Commit
your work on your branch; the operator reviews it.
"""
LEDGER_LOCK = "mailbox.lock"
"""Held (flock) while the ledger is appended to or scrubbed."""
ROLE_MAX_CHARS = 32 * 1024
TURN_ITEMS = 50
"""Mailbox entries one turn takes at most (a flood is spread over turns)."""
TURN_CHARS = 256 * 1024
"""Characters of message bodies one turn's prompt takes at most (past the first entry)."""


def build_prompt(agent: AgentRecord, role: str, entries: list[dict[str, Any]], first: bool) -> str:
    """The prompt of a turn: the role on a first turn (or for an agent that cannot resume),
    then the new mailbox entries."""
    parts = [role.strip(), ""] if first else []
    parts.append(f"[hive] {len(entries)} new item(s) in the mailbox of {agent.name}:")
    for entry in entries:
        ref = f", re {entry['ref']}" if entry.get("ref") else ""
        parts.append(f"\n--- {entry['kind']} {entry['id']} from {entry['sender']}{ref} ---")
        parts.append(_quoted(str(entry["body"])))
    return "\n".join(parts) + "\n"


def _quoted(body: str) -> str:
    """``body`` with each line that could pass for the prompt's own framing (an item's
    ``--- KIND ID from SENDER ---`` line, the ``[hive]`` line) quoted with ``> ``: a sender
    cannot make its message show an item from the operator, or an approval from hal."""
    return "\n".join(
        "> " + line if _as_read(line).startswith(("---", "[hive]")) else line
        for line in body.splitlines()  # every line end a reader may honour: \r, U+2028...
    )


def _as_read(line: str) -> str:
    """The start of ``line`` as a reader (a model) sees it: without leading spaces and
    invisible characters (a zero-width space, a BOM, a soft hyphen), compatibility forms
    folded (fullwidth hyphens), and every dash (em dash, hyphen, minus) a hyphen-minus."""
    start = 0
    while start < len(line) and (line[start].isspace() or _invisible(line[start])):
        start += 1
    head = unicodedata.normalize("NFKC", line[start : start + 64])
    kept = (
        "-" if unicodedata.category(c) == "Pd" or c == "\u2212" else c
        for c in head
        if not _invisible(c)
    )
    return "".join(kept).lstrip()


def _invisible(char: str) -> bool:
    return unicodedata.category(char) == "Cf"


def first_batch(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mailbox entries one turn takes: in order, at most ``TURN_ITEMS`` and
    ``TURN_CHARS`` of bodies (always at least one); the rest wait for the next turn."""
    taken: list[dict[str, Any]] = []
    chars = 0
    for entry in entries[:TURN_ITEMS]:
        chars += len(str(entry.get("body", "")))
        if taken and chars > TURN_CHARS:
            break
        taken.append(entry)
    return taken


def agents_dir(home: Path) -> Path:
    """Where the hive keeps the state directories of its agents."""
    return home / "agents"


@dataclass(frozen=True)
class AgentDir:
    """Paths of one agent's state directory."""

    root: Path

    @classmethod
    def of(cls, home: Path, name: str) -> AgentDir:
        """The state directory of agent ``name`` (the name checked: it is a path part)."""
        return cls(agents_dir(home) / check_name(name))

    @property
    def role(self) -> Path:
        """The role prompt."""
        return self.root / "role.md"

    @property
    def mailbox(self) -> Path:
        """The mailbox ledger (JSON lines, one per message, each id once)."""
        return self.root / "mailbox.jsonl"

    @property
    def cursor_file(self) -> Path:
        """How many ledger entries finished turns have taken."""
        return self.root / "cursor"

    @property
    def repo(self) -> Path:
        """The agent's own repository (when spawned without one)."""
        return self.root / "repo"

    # -- the mailbox ledger ------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        """Every ledger entry, in order; a torn last line (a crash mid-append) is skipped."""
        try:
            data = self.mailbox.read_bytes()
        except FileNotFoundError:
            return []
        return [e for e in map(_ledger_entry, data.splitlines()) if e is not None]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The ledger to this caller alone, across processes: an append (the turn loop) and
        a scrub (``hal vacuum``, maybe another process) never interleave, so the scrub's
        rewrite cannot drop a line appended meanwhile."""
        fd = os.open(self.root / LEDGER_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def append(self, messages: Iterable[Message]) -> list[str]:
        """Add messages not in the ledger yet (dedupe by id), fsynced; returns the ids added.

        Called before the broker marks them delivered: a crash in between delivers them
        again after a restart, and this dedupe makes the agent see each one once."""
        with self.locked():
            return self._append(list(messages))

    def _append(self, messages: list[Message]) -> list[str]:
        have = {entry["id"] for entry in self.entries()}
        new = [m for m in messages if m.id not in have]
        if not new:
            return []
        lines = b"".join(
            json.dumps(m.model_dump(exclude={"state"}), ensure_ascii=False).encode() + b"\n"
            for m in new
        )
        fd = os.open(self.mailbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and _last_byte(self.mailbox, size) != b"\n":
                lines = b"\n" + lines  # end a torn line first
            os.write(fd, lines)
            os.fsync(fd)
        finally:
            os.close(fd)
        return [m.id for m in new]

    def cursor(self) -> int:
        """How many entries finished turns have taken."""
        try:
            return int(self.cursor_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def set_cursor(self, value: int) -> None:
        """Record that turns have taken the first ``value`` entries (atomic)."""
        agentfs.write_host_file(self.cursor_file, iter([str(value).encode()]))

    def pending(self) -> list[dict[str, Any]]:
        """Ledger entries no finished turn has taken yet (but those the operator dropped)."""
        return [e for e in self.entries()[self.cursor() :] if not e.get("dropped")]

    def drop(self, message_id: str) -> bool:
        """Make the entry of ``message_id`` that no finished turn took a stub no turn gets
        (one atomic rewrite; it keeps its id and place, so the cursor and the dedupe hold:
        the message is never appended again). Whether there was one."""
        with self.locked():
            try:
                lines = self.mailbox.read_bytes().splitlines()
            except FileNotFoundError:
                return False
            cursor, index, found, kept = self.cursor(), 0, False, []
            for line in lines:
                entry = _ledger_entry(line)
                if entry is not None:
                    if index >= cursor and entry["id"] == message_id and not entry.get("dropped"):
                        stub = {"id": message_id, "kind": entry.get("kind"),
                                "created": entry.get("created"), "dropped": True}  # fmt: skip
                        line, found = json.dumps(stub).encode(), True
                    index += 1
                kept.append(line)
            if found:
                agentfs.write_host_file(self.mailbox, iter([b"".join(x + b"\n" for x in kept)]))
            return found

    def scrub(self, before: float, *, dry_run: bool = False) -> int:
        """Retention of the ledger: the entries finished turns took that were created before
        ``before`` lose their body, sender and ref (one atomic rewrite; with ``dry_run``,
        only counted). Each keeps its id and its place, so the cursor and the dedupe hold;
        entries no turn took yet are never touched. Returns how many were (or would be)
        scrubbed."""
        with self.locked():
            try:
                lines = self.mailbox.read_bytes().splitlines()
            except FileNotFoundError:
                return 0
            cursor = self.cursor()
            kept: list[bytes] = []
            index = scrubbed = 0
            for line in lines:
                entry = _ledger_entry(line)
                if entry is None:  # a torn line: dropped once the turns took what follows
                    if index >= cursor:
                        kept.append(line)
                    continue
                if index < cursor and not entry.get("scrubbed") and _before(entry, before):
                    scrubbed += 1
                    stub = {"id": entry["id"], "kind": entry.get("kind"),
                            "created": entry.get("created"), "scrubbed": True}  # fmt: skip
                    line = json.dumps(stub).encode()
                kept.append(line)
                index += 1
            if scrubbed and not dry_run:
                agentfs.write_host_file(self.mailbox, iter([b"".join(x + b"\n" for x in kept)]))
            return scrubbed


def _ledger_entry(line: bytes) -> dict[str, Any] | None:
    """A ledger line's entry, or None for a torn line (what :meth:`AgentDir.entries` skips)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("id"), str) else None


def _before(entry: dict[str, Any], when: float) -> bool:
    created = entry.get("created")
    return isinstance(created, int | float) and created < when


def _last_byte(path: Path, size: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(size - 1)
        return handle.read(1)


async def spawn(
    store: Store,
    config: HalConfig,
    name: str,
    *,
    agent: str,
    provider: str,
    repo: str | None = None,
    role: str | None = None,
    kind: Literal["agent", "manager"] = "agent",
    policy: AgentPolicy | None = None,
    also: InTransaction | None = None,
) -> AgentRecord:
    """Create agent ``name`` asleep: its state directory, role and (without ``repo``) its
    own repository, its record committed with ``also``. It runs its first turn when its
    first message arrives."""
    check_name(name)
    resolve_agent(agent, config.agent_settings(agent))  # an unknown agent fails here
    load_provider_for(config, provider)  # so does an unknown provider
    if role is not None and len(role) > ROLE_MAX_CHARS:
        raise HiveError(f"the role has {len(role)} characters, more than {ROLE_MAX_CHARS}")
    if repo is not None:
        source = await gitrepo.resolve_source(repo, Path.cwd())
        repo = source.location
    paths = AgentDir.of(config.home, name)
    if await asyncio.to_thread(get_agent_or_none, store, name) is not None:
        raise HiveError(
            f"an agent called {name!r} already exists",
            hint=f"choose another name, or `hal agent rm {name}` first",
        )
    agents_dir(config.home).mkdir(mode=0o700, exist_ok=True)
    paths.root.mkdir(mode=0o700, exist_ok=True)
    agentfs.write_host_file(paths.role, iter([(role or DEFAULT_ROLE.format(name=name)).encode()]))
    if repo is None:
        repo = str(await _own_repo(paths.repo, name))
    now = time.time()
    record = AgentRecord(
        name=name, agent=agent, provider=provider, repo=repo, kind=kind,
        state="sleeping", policy=policy or AgentPolicy(), created_at=now, updated_at=now,
    )  # fmt: skip
    await asyncio.to_thread(insert_agent, store, record, also=also)
    await asyncio.to_thread(
        record_hive_event, store, AgentState(agent=name, state="sleeping", detail="spawned")
    )
    return record


def get_agent_or_none(store: Store, name: str) -> AgentRecord | None:
    """The agent called ``name``, or None."""
    from hal9999.errors import AgentNotFound

    try:
        return get_agent(store, name)
    except AgentNotFound:
        return None


async def _own_repo(path: Path, name: str) -> Path:
    """A fresh repository with one commit, for an agent spawned without one."""
    if (path / ".git").is_dir():
        return path
    path.mkdir(mode=0o700, exist_ok=True)
    (path / "README.md").write_text(f"# {name}\n\nThe workspace of hive agent {name}.\n")
    ident = ["-c", "user.name=hal", "-c", "user.email=hal@localhost"]
    await gitrepo.git(["init", "-q", "-b", "main"], cwd=path, what="creating the agent's repo")
    await gitrepo.git(["add", "README.md"], cwd=path, what="creating the agent's repo")
    await gitrepo.git(
        [*ident, "commit", "-q", "--no-verify", "-m", "hive agent workspace"],
        cwd=path, what="creating the agent's repo",
    )  # fmt: skip
    return path


def set_state(
    store: Store, name: str, state: str, detail: str | None = None, *, expect: str | None = None,
    also: InTransaction | None = None, **fields: Any,
) -> AgentRecord | None:  # fmt: skip
    """Move an agent to ``state`` (compare-and-set with ``expect``) and record the event,
    with ``also`` (what must not be lost without the move: a notice of it) in the same
    transaction."""
    before = get_agent(store, name)

    def record(conn: sqlite3.Connection, recorded: list[HiveEvent]) -> None:
        if before.state != state or detail:
            event = AgentState(agent=name, state=state, previous=before.state, detail=detail)
            recorded.append(insert_hive_event(conn, event))
        if also is not None:
            also(conn, recorded)

    return update_agent(store, name, expect=expect, also=record, state=state, detail=detail,
                        **fields)  # fmt: skip


def drop_mail(
    store: Store, home: Path, name: str, message_id: str, *, turn_running: bool = False
) -> Message:
    """Take an unread message out of agent ``name``'s mailbox: its ledger entry first (a
    delivered one is there, and a stopped turn's next turn would get it), then its record.
    In that order: a process killed in between leaves the record, which dropping again
    removes, never an entry a turn would get. With ``turn_running``, a delivered message
    (the running turn's) is refused: that turn has it already."""
    found = broker.unread_message(store, name, message_id)
    if turn_running and found.state == "delivered":
        raise HiveError(
            f"the turn of {name} under way already has message {message_id}",
            hint=f"stop the agent (`hal agent stop {name}`), then drop it",
        )
    AgentDir.of(home, name).drop(message_id)
    return broker.drop(store, name, message_id)


def forget(store: Store, home: Path, name: str, *, also: InTransaction | None = None) -> None:
    """Remove an agent's state directory, then its record with ``also`` (its task is removed
    by the caller). In that order: a process killed in between leaves the record, so
    removing it again finishes the job, never a mailbox a new agent of the name would get.
    Its mail not read yet is read with the record's removal, or a new agent given the name
    would get it on its first turn."""
    agentfs.remove_tree(AgentDir.of(home, name).root)

    def retire(conn: sqlite3.Connection, recorded: list[HiveEvent]) -> None:
        if also is not None:
            also(conn, recorded)
        broker.retire(conn, recorded, name)  # after ``also``: a notice to it goes too

    delete_agent(store, name, also=retire)
    record_hive_event(store, AgentState(agent=name, state="removed"))
