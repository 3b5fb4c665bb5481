"""The daemon's MCP server: one unix socket per hive agent, the official SDK on each.

Only ``hal serve`` imports this module (the SDK pulls in starlette and more). Each agent's
socket lives in its own directory, bound into that agent's sandboxes only (see
:mod:`.channel`); a connection speaks MCP's stdio framing (one JSON-RPC message a line)
because the agent CLI's stdio reaches it byte for byte through the forwarder. The
:class:`~.tools.Caller` of every call is the agent whose socket accepted the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any, cast

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from pydantic import BaseModel, ValidationError

from hal9999.errors import HalError
from hal9999.hive import subtasks
from hal9999.hive.mcp.channel import SOCKET_NAME, McpPaths, checked_name
from hal9999.hive.mcp.thread_tools import THREAD_TOOLS
from hal9999.hive.mcp.tools import Caller, Hive, Tool, tools_for
from hal9999.unixsock import bound

logger = logging.getLogger(__name__)

MAX_LINE = 4 << 20
"""The longest JSON-RPC line a connection accepts (a message body is at most 64 KiB)."""
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
MAX_SESSIONS = 8
"""Connections one agent may hold at once (a CLI uses one; a hostile agent gets no more)."""
INSTRUCTIONS = (
    "hal's hive tools. You are a named agent; messages, answers, approval results and "
    "reminders arrive in your next turn's prompt (or via inbox/recv)."
)


def tool_error(text: str) -> types.CallToolResult:
    """A tool call that failed, as the agent sees it: one clear line."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    schema.pop("description", None)  # the tool's own description says it, once
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


def _field(where: str) -> str:
    """A field name the agent chose, on one short line (control characters escaped)."""
    shown = json.dumps(where, ensure_ascii=False)[1:-1]
    return shown if len(shown) <= 60 else shown[:60] + "…"


def _validation_line(name: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = _field(".".join(str(p) for p in first["loc"])) or "arguments"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"bad arguments for {name}: {where}: {first['msg']}{more}"


def _extra_line(name: str, extra: list[str]) -> str:
    more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
    return f"bad arguments for {name}: {_field(extra[0])}: Extra inputs are not permitted{more}"


def build_server(caller: Caller, tools: dict[str, Tool]) -> Server[Any]:
    """An MCP server whose every tool acts as ``caller``."""
    listing = [
        types.Tool(name=t.name, description=t.description, input_schema=_schema(t.args))
        for t in tools.values()
    ]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listing)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = tools.get(params.name)
        if tool is None:
            return tool_error(f"unknown tool {params.name!r} (tools: {', '.join(tools)})")
        arguments = params.arguments or {}
        # Refused before validation: pydantic makes an error of each (250,000 unknown
        # names in one call took 300 MiB and 5 s of the daemon).
        extra = [key for key in arguments if key not in tool.args.model_fields]
        if extra:
            return tool_error(_extra_line(tool.name, extra))
        try:
            args = tool.args.model_validate(arguments)
        except ValidationError as exc:
            return tool_error(_validation_line(tool.name, exc))
        try:
            text = await tool.run(caller, args)
        except HalError as exc:
            return tool_error(f"{exc.code}: {exc.one_line()}")
        except Exception:
            logger.exception("mcp tool %s of %s failed", tool.name, caller.agent)
            return tool_error(f"internal: {tool.name} failed in hal (see the daemon's log)")
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server(
        "hal",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


PARSE_ERROR = "parse error: not one JSON value a line (or nested too deep to read)"
_UNPARSEABLE = json.dumps(
    {"jsonrpc": "2.0", "id": None, "error": {"code": types.PARSE_ERROR, "message": PARSE_ERROR}},
    separators=(",", ":"),
)

_TOO_MANY = json.dumps(
    {"jsonrpc": "2.0", "id": None, "error": {"code": types.INVALID_REQUEST, "message":
     f"invalid request: over {MAX_VALUES} JSON values in one line: send a smaller one"}},
    separators=(",", ":"),
)  # fmt: skip


def _refusals(line: str, exc: ValidationError | None) -> list[str]:
    """JSON-RPC errors for the requests in ``line``, which the SDK refuses: a batch (MCP has
    none; ``exc`` None: never validated), a lone surrogate, a wrong type (``exc`` says why).
    Without one, a client would wait for its answer until it times out. A line that is not
    JSON, or nests too deep to read, gets the spec's parse error (id null); a blank one asks
    nothing."""
    try:
        value = json.loads(line)  # past ~1,000 levels: RecursionError, nothing held
    except (ValueError, RecursionError):
        return [_UNPARSEABLE] if line.strip() else []
    batch = isinstance(value, list)
    if batch or exc is None:
        why = "a batch (MCP has none): send one JSON-RPC message a line"
    else:
        why = " ".join(str(exc.errors()[0]["msg"]).split())[:200]
    answers = []
    for item in value if batch else [value]:
        request_id = item.get("id") if isinstance(item, dict) and "method" in item else None
        if isinstance(request_id, str) or (
            isinstance(request_id, int) and not isinstance(request_id, bool)
        ):
            error = {"code": types.INVALID_REQUEST, "message": f"invalid request: {why}"}
            answer = {"jsonrpc": "2.0", "id": request_id, "error": error}
            answers.append(json.dumps(answer, separators=(",", ":")))
    return answers


class _Unanswered:
    """The requests a connection made that have no answer yet.

    A client may half-close its side after its last request (a script piping requests in,
    or the forwarder passing on an agent CLI's closed stdin) and still wait for every
    answer; the SDK ends a connection at the end of its input and answers what is in flight
    with "Connection closed". So the end of input is held back until every request read has
    been answered (or cancelled by the client), for at most :data:`DRAIN_S`. The same count
    bounds the requests in flight (:meth:`room`): an id sent twice counts twice.
    """

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.count = 0
        self.changed = asyncio.Event()

    @staticmethod
    def _key(value: object) -> str:
        return json.dumps(value)  # 2 and "2" are different request ids

    def read(self, line: str) -> list[str] | None:
        """Note a request (or a client's cancel of one) in a line the client sent: what the
        SDK itself takes for one; None then. The SDK would drop what does not validate,
        answering nothing: for such a line (not passed on), the error answers owed for the
        request ids it holds."""
        if sum(map(line.count, ",{[")) > MAX_VALUES:  # never validated: see MAX_VALUES
            return [_TOO_MANY]
        if line.lstrip().startswith("["):  # not validated: 4 MiB of one took 500 MiB to
            return _refusals(line, None)  # refuse (an error per item and union member)
        try:
            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        except ValidationError as exc:
            return _refusals(line, exc)
        if isinstance(message, types.JSONRPCRequest):
            key = self._key(message.id)
            self.ids[key] = self.ids.get(key, 0) + 1
            self.count += 1
        elif (
            isinstance(message, types.JSONRPCNotification)
            and message.method == "notifications/cancelled"
            and "requestId" in (message.params or {})
        ):  # never answered: forget it
            self._done(self._key((message.params or {})["requestId"]))
        return None

    def written(self, text: str) -> None:
        """Note an answer in a line the server wrote."""
        try:
            message = json.loads(text)
        except ValueError:
            return
        if isinstance(message, dict) and "method" not in message and "id" in message:
            self._done(self._key(message["id"]))

    def _done(self, key: str) -> None:
        left = self.ids.pop(key, 0)
        if left:
            self.count -= 1
            if left > 1:
                self.ids[key] = left - 1
        self.changed.set()

    async def _fewer_than(self, most: int) -> None:
        """Return once fewer than ``most`` requests are unanswered, or after :data:`DRAIN_S`
        (then the ones still counted are forgotten: a request the SDK never answers, such
        as one it could not parse, must not stall the connection for ever)."""
        try:
            async with asyncio.timeout(DRAIN_S):
                while self.count >= most:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            self.ids.clear()
            self.count = 0

    async def room(self) -> None:
        """Return once another request may be read (see :data:`MAX_IN_FLIGHT`)."""
        if self.count >= MAX_IN_FLIGHT:
            await self._fewer_than(MAX_IN_FLIGHT)

    async def drained(self) -> None:
        """Return once every request read has been answered, or after :data:`DRAIN_S`."""
        await self._fewer_than(1)
        await asyncio.sleep(0)  # the writer's flush of the last answer runs first


class _Lines:
    """A connection's read side as the text lines ``stdio_server`` iterates over."""

    def __init__(self, reader: asyncio.StreamReader, unanswered: _Unanswered, out: _Out) -> None:
        self.reader = reader
        self.unanswered = unanswered
        self.out = out

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while True:
            await self.unanswered.room()
            try:
                line = await self.reader.readline()
            except (ValueError, ConnectionError):  # a line past MAX_LINE, a reset: hang up
                raise StopAsyncIteration from None
            if not line:
                await self.unanswered.drained()  # a half-close still gets its answers
                raise StopAsyncIteration
            text = line.decode("utf-8", "replace")
            refusals = self.unanswered.read(text)
            if refusals is None:
                return text
            try:  # one whole line each (never inside another answer), drained as it goes:
                for answer in refusals:  # a 4 MiB batch holds ~200,000 ids
                    await self.out.write(answer + "\n")
                    await self.out.flush()
            except ConnectionError:
                raise StopAsyncIteration from None


class _Out:
    """A connection's write side as the text file ``stdio_server`` writes to."""

    def __init__(self, writer: asyncio.StreamWriter, unanswered: _Unanswered) -> None:
        self.writer = writer
        self.unanswered = unanswered

    async def write(self, text: str) -> None:
        self.writer.write(text.encode())
        self.unanswered.written(text)

    async def flush(self) -> None:
        await self.writer.drain()


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

    def __init__(self, hive: Hive, extra_tools: list[Tool] | None = None) -> None:
        self.hive = hive
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
            if task is None or len(mine) >= MAX_SESSIONS:
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
                mine.discard(task)
                self._conns.discard(task)

        self._servers[agent] = await asyncio.start_unix_server(
            connected, sock=listener, limit=MAX_LINE
        )
        return directory / SOCKET_NAME

    async def _session(
        self,
        caller: Caller,
        tools: dict[str, Tool],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        server = build_server(caller, tools)
        unanswered = _Unanswered()
        out = _Out(writer, unanswered)
        lines = _Lines(reader, unanswered, out)
        try:
            async with stdio_server(cast(Any, lines), cast(Any, out)) as (
                read_stream,
                write_stream,
            ):
                await server.run(read_stream, write_stream, server.create_initialization_options())
        except (ConnectionError, OSError):
            pass  # the agent CLI went away mid-call
        finally:
            writer.close()

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
