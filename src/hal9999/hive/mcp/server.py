"""The daemon's MCP server: one unix socket per hive agent, the official SDK on each.

Only ``hal serve`` imports this module; the SDK itself (it pulls in starlette and more) only
with :mod:`.session`, at the daemon's first MCP connection. Each agent's
socket lives in its own directory, bound into that agent's sandboxes only (see
:mod:`.channel`); a connection speaks MCP's stdio framing (one JSON-RPC message a line)
because the agent CLI's stdio reaches it byte for byte through the forwarder. The
:class:`~.tools.Caller` of every call is the agent whose socket accepted the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

from hal9999.errors import HalError
from hal9999.hive import subtasks
from hal9999.hive.mcp.budget import READ_CHUNK, McpBudget, McpLimits
from hal9999.hive.mcp.channel import SOCKET_NAME, McpPaths, checked_name
from hal9999.hive.mcp.thread_tools import THREAD_TOOLS
from hal9999.hive.mcp.tools import Caller, Hive, Tool, tools_for
from hal9999.unixsock import bound

logger = logging.getLogger(__name__)

_SESSION = "hal9999.hive.mcp.session"
"""The module of a connection's session, with the MCP SDK (imported at a first connection)."""

SYNC_INTERVAL_S = 2.0
DRAIN_S = 60.0
"""How long a half-closed connection waits for its last answers (``recv`` takes <= 45 s)."""
MAX_IN_FLIGHT = 16
"""Requests of one connection handled at once: the next line is read only when one of them
is answered (the SDK runs each request in a task of its own; a client pipelining thousands
of 40 s ``recv`` calls must not become thousands of tasks polling the store)."""
MAX_VALUES = 1 << 18
"""The most JSON values one line may hold, counted as its commas, "{" and "[" (in strings
too: a 64 KiB body of commas is 65,536): 4 MiB of ``{},`` is 1.4 million dicts, 96 MiB
held and 192 MiB at peak in each of the two validations (``read``'s and the SDK's)."""
PARSE_ERROR = "parse error: not one JSON value a line (or nested too deep to read)"


_READ = bytearray(16 << 10)
"""What every MCP connection's socket is read into, then copied to its stream: the loop is
one thread and the copy is made at once, so one buffer serves them all."""


class _BoundedStream(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """A connection's stream, read from its socket at most :data:`_READ` at a time. The
    stream stops reading past twice its bound (:data:`READ_CHUNK`), but asyncio's own read
    took up to 256 KiB past that (what a hostile sender's socket buffer holds): a connection
    held ~270 KiB uncounted with a 64 KiB stream (measured); now at most 2 x 32 + 16 KiB."""

    def get_buffer(self, sizehint: int) -> bytearray:
        """Where the next read of the socket goes."""
        return _READ

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into :data:`_READ`: they go to the stream."""
        self.data_received(bytes(memoryview(_READ)[:nbytes]))


def _bind(directory: Path) -> socket.socket:
    """A listening socket at ``directory/mcp.sock`` (via the directory's fd: a long home
    would not fit a socket address), world-connectable: the directory is what guards it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET_NAME, dir_fd=fd)
        sock = bound(directory / SOCKET_NAME)
        os.chmod(SOCKET_NAME, 0o666, dir_fd=fd)  # the sandbox's own uid connects
    finally:
        os.close(fd)
    sock.listen(16)
    sock.setblocking(False)
    return sock


class McpHub:
    """The daemon's per-agent MCP sockets."""

    def __init__(
        self, hive: Hive, extra_tools: list[Tool] | None = None, limits: McpLimits | None = None
    ) -> None:
        self.hive = hive
        self.budget = McpBudget(limits)
        """Connections, unread answers and unended lines, bounded per agent and daemon-wide."""
        self.paths = McpPaths(hive.home)
        self.extra_tools = [*THREAD_TOOLS, *(extra_tools or [])]
        self._servers: dict[str, asyncio.Server] = {}
        self._conns: set[asyncio.Task[None]] = set()
        self._sessions: dict[str, set[asyncio.Task[None]]] = {}
        """Per agent: its connections' tasks (closing its socket ends them)."""
        self._born: dict[str, float | None] = {}
        """Per agent served: the ``created_at`` of the record it was served for (None when
        not known): an agent removed and made again under its name is another agent."""
        self._serving = asyncio.Lock()

    @property
    def served(self) -> list[str]:
        """The agents with a socket open."""
        return sorted(self._servers)

    async def serve(self, agent: str, *, manager: bool = False, born: float | None = None) -> Path:
        """Open ``agent``'s socket (again, if open); returns its host path. ``born`` is the
        ``created_at`` of its record."""
        async with self._serving:
            return await self._serve(agent, manager=manager, born=born)

    async def ensure(self, agent: str, *, manager: bool = False, born: float | None = None) -> None:
        """Serve ``agent``'s socket now if it is not served yet (an agent spawned since the
        last :meth:`sync`, whose first turn is about to start), or was served for an agent
        of its name removed since (``born`` differs: its sessions end and its files go).
        Under the same lock as :meth:`serve`: a sync opening it meanwhile is waited for."""
        async with self._serving:
            await self._ensure(agent, manager=manager, born=born)

    async def _ensure(self, agent: str, *, manager: bool, born: float | None) -> None:
        if agent not in self._servers or self._replaced(agent, born):
            await self._serve(agent, manager=manager, born=born)

    def _replaced(self, agent: str, born: float | None) -> bool:
        """Whether ``agent`` is served for another agent of its name than the one ``born``."""
        served = self._born.get(agent)
        return agent in self._servers and None not in (served, born) and served != born

    async def _serve(self, agent: str, *, manager: bool, born: float | None) -> Path:
        checked_name(agent)
        replaced = self._replaced(agent, born)
        await self.close(agent)
        if replaced:  # what the sync would remove for a removed agent, before the new one's
            await self.hive.db(self._forget, agent)
        self._born[agent] = born
        directory = await asyncio.to_thread(self.paths.prepare, agent)
        listener = await asyncio.to_thread(_bind, directory)
        caller = Caller(self.hive, agent, manager)
        tools = tools_for(manager, self.extra_tools)
        mine: set[asyncio.Task[None]] = set()
        self._sessions[agent] = mine

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is None or not self.budget.connect(agent):
                writer.close()
                return
            mine.add(task)
            self._conns.add(task)
            try:
                await self._session(caller, tools, reader, writer)
            except asyncio.CancelledError:
                pass  # close_all ends it: the session is over, not failed (asyncio logs those)
            except Exception:  # a broken session must not take the listener with it
                logger.debug("mcp session of %s ended", agent, exc_info=True)
            finally:
                self.budget.disconnect(agent)
                mine.discard(task)
                self._conns.discard(task)

        def stream() -> _BoundedStream:  # a longer line is read on, counted in the budget
            return _BoundedStream(asyncio.StreamReader(limit=READ_CHUNK), connected)

        loop = asyncio.get_running_loop()
        self._servers[agent] = await loop.create_unix_server(stream, sock=listener)
        return directory / SOCKET_NAME

    async def _session(
        self,
        caller: Caller,
        tools: dict[str, Tool],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            if _SESSION not in sys.modules:  # the SDK, ~1 s of imports: not on the event loop
                await asyncio.to_thread(importlib.import_module, _SESSION)
            from hal9999.hive.mcp.session import run_session
        except BaseException:
            writer.close()
            raise
        await run_session(caller, tools, reader, writer, self.budget)

    async def close(self, agent: str) -> None:
        """Close ``agent``'s socket (its file goes with it; open sessions end)."""
        server = self._servers.pop(agent, None)
        self._born.pop(agent, None)
        if server is None:
            return
        server.close()
        with contextlib.suppress(FileNotFoundError):
            self.paths.socket(agent).unlink()
        # Server.close() only stops accepting: a connection made before would go on acting
        # as the agent, removed (or as the next agent spawned under its name).
        sessions = [t for t in self._sessions.pop(agent, ()) if t is not asyncio.current_task()]
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)

    async def retire(self, agent: str, *, born: float | None = None) -> None:
        """An agent (``born``: its record's ``created_at``) was removed: close its socket
        (its sessions end) and remove its files. Under the lock: a sync or a first turn
        serving it meanwhile is waited for; one that served an agent made again under its
        name since is left alone (its socket and files are the new agent's)."""
        async with self._serving:
            if self._replaced(agent, born):
                return
            await self.close(agent)
            await self.hive.db(self._forget, agent)

    async def sync(self) -> None:
        """Serve every agent of the hive, and only those (called at start and periodically)."""
        from hal9999.hive.store import list_agents

        # Listed and applied under the lock: an agent's first turn serving it between the
        # two (a new agent, or one made again under its name) was undone by the older list.
        async with self._serving:
            records = await self.hive.db(list_agents, self.hive.store)
            wanted = {r.name: (r.kind == "manager", r.created_at) for r in records}
            for name in [n for n in self._servers if n not in wanted]:
                await self.close(name)
            await self.hive.db(self._forget_removed, set(wanted))
            for name, (manager, born) in wanted.items():
                await self._ensure(name, manager=manager, born=born)

    def _forget(self, agent: str) -> None:
        """Remove ``agent``'s directory and sub-task list (as :meth:`_forget_removed`)."""
        directory = self.paths.root / agent
        if not directory.is_symlink() and directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)
        subtasks.tasks_file(self.hive.home, agent).unlink(missing_ok=True)

    def _forget_removed(self, wanted: set[str]) -> None:
        """A removed agent's directory and sub-task list go, so an agent spawned later under
        its name inherits nothing (both are hal's own files, never written inside)."""
        for directory in self.paths.root.glob("*") if self.paths.root.is_dir() else []:
            if directory.name not in wanted and not directory.is_symlink() and directory.is_dir():
                shutil.rmtree(directory, ignore_errors=True)
        owned = subtasks.folder(self.hive.home)
        for path in owned.glob("*.json") if owned.is_dir() else []:
            if path.stem not in wanted:
                path.unlink(missing_ok=True)

    async def run_forever(self) -> None:
        """Keep :meth:`sync` applied (agents spawned or removed while the daemon runs)."""
        while True:
            try:
                await self.sync()
            except (HalError, OSError, ValueError) as exc:
                logger.warning("mcp: %s", exc)
            await asyncio.sleep(SYNC_INTERVAL_S)

    async def close_all(self) -> None:
        """Close every socket and end the sessions in flight."""
        for agent in list(self._servers):
            await self.close(agent)
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
