"""One MCP session on an agent's socket: the official SDK's server over the connection.

Split from :mod:`.server` so that the SDK (``mcp``, ``mcp_types``: ~1 s of imports, over 300
modules) is loaded by :meth:`.server.McpHub._session` at a daemon's first MCP connection, off
the event loop, instead of by every ``hal serve`` at its start (most never see an agent).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, cast

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from pydantic import BaseModel, ValidationError

from hal9999.errors import HalError
from hal9999.hive.mcp.budget import MAX_LINE, READ_CHUNK, McpBudget
from hal9999.hive.mcp.server import DRAIN_S, MAX_IN_FLIGHT, MAX_VALUES, PARSE_ERROR
from hal9999.hive.mcp.tools import MAX_ANSWER_CHARS, Caller, Tool

logger = logging.getLogger(__name__)

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
        hive = caller.hive
        if hive.masker_of is not None:  # before anything keeps it: the store, a prompt, a page
            masker = await hive.db(hive.masker_of, caller.agent)
            args = args if masker is None else masker.mask_model(args)
        try:
            text = await tool.run(caller, args)
        except HalError as exc:
            return tool_error(f"{exc.code}: {exc.one_line()}")
        except Exception:
            logger.exception("mcp tool %s of %s failed", tool.name, caller.agent)
            return tool_error(f"internal: {tool.name} failed in hal (see the daemon's log)")
        if len(text) > MAX_ANSWER_CHARS:  # held until the agent reads it: see the bound
            logger.warning("mcp tool %s of %s: an answer of %d characters withheld",
                           tool.name, caller.agent, len(text))  # fmt: skip
            return tool_error(f"internal: {tool.name}'s answer is over {MAX_ANSWER_CHARS} "
                              "characters (see the daemon's log)")  # fmt: skip
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server(
        "hal",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


_UNPARSEABLE = json.dumps(
    {"jsonrpc": "2.0", "id": None, "error": {"code": types.PARSE_ERROR, "message": PARSE_ERROR}},
    separators=(",", ":"),
)

_TOO_MANY = json.dumps(
    {"jsonrpc": "2.0", "id": None, "error": {"code": types.INVALID_REQUEST, "message":
     f"invalid request: over {MAX_VALUES} JSON values in one line: send a smaller one"}},
    separators=(",", ":"),
)  # fmt: skip


_OVER_READ = json.dumps(
    {"jsonrpc": "2.0", "id": None, "error": {"code": types.INVALID_REQUEST, "message":
     f"invalid request: a line past {READ_CHUNK} bytes is read only while the lines not yet "
     "ended fit [hive] mcp_read_bytes_per_agent (this agent's) and mcp_read_bytes (all "
     "agents'); this one did not and was dropped: connect again and resend it"}},
    separators=(",", ":"),
)  # fmt: skip


class _OverRead(Exception):
    """A line being read would pass a bound of :attr:`.McpBudget.reading`."""


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
    bounds the requests in flight (:meth:`room`): an id sent twice counts twice. Each
    request is also counted in the daemon's :class:`~.budget.McpBudget` (as ``agent``'s)
    from when it is read until its answer has been drained to the socket.
    """

    def __init__(self, budget: McpBudget, agent: str) -> None:
        self.ids: dict[str, int] = {}
        self.count = 0
        self.changed = asyncio.Event()
        self.budget = budget
        self.agent = agent
        self.reserved = 0
        """Requests counted in the budget and not released yet."""
        self.sent = 0
        """Of those, the ones answered: released once the answer is drained."""

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
            if self._done(self._key((message.params or {})["requestId"])):
                self.release(1)
        return None

    def written(self, text: str) -> None:
        """Note an answer in a line the server wrote."""
        try:
            message = json.loads(text)
        except ValueError:
            return
        if isinstance(message, dict) and "method" not in message and "id" in message:
            if self._done(self._key(message["id"])):
                self.sent += 1

    def _done(self, key: str) -> bool:
        """Forget one request of id ``key``; whether there was one."""
        left = self.ids.pop(key, 0)
        if left:
            self.count -= 1
            if left > 1:
                self.ids[key] = left - 1
        self.changed.set()
        return bool(left)

    async def reserve(self) -> None:
        """Count a request read in the budget, once it fits (back-pressure till then)."""
        await self.budget.reserve(self.agent)
        self.reserved += 1

    def release(self, requests: int) -> None:
        """Give back to the budget ``requests`` counted ones (answered, dropped, forgotten)."""
        requests = min(requests, self.reserved)
        self.reserved -= requests
        self.budget.release(self.agent, requests)

    def drained(self) -> None:
        """The answers written so far have left the daemon (the writer drained)."""
        self.release(self.sent)
        self.sent = 0

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
            self.release(self.count)
            self.ids.clear()
            self.count = 0

    async def room(self) -> None:
        """Return once another request may be read (see :data:`MAX_IN_FLIGHT`)."""
        if self.count >= MAX_IN_FLIGHT:
            await self._fewer_than(MAX_IN_FLIGHT)

    async def answered(self) -> None:
        """Return once every request read has been answered, or after :data:`DRAIN_S`."""
        await self._fewer_than(1)
        await asyncio.sleep(0)  # the writer's flush of the last answer runs first


class _Lines:
    """A connection's read side as the text lines ``stdio_server`` iterates over."""

    def __init__(self, reader: asyncio.StreamReader, unanswered: _Unanswered, out: _Out) -> None:
        self.reader = reader
        self.unanswered = unanswered
        self.out = out
        self.reading = unanswered.budget.reading

    def __aiter__(self) -> _Lines:
        return self

    async def _line(self) -> bytes:
        """The next line, newline included (b"" at the end of input; ValueError past
        :data:`MAX_LINE`). The stream buffers :data:`READ_CHUNK` of it uncounted; each part
        read past that is counted as the agent's in the budget's ``reading`` until the
        newline comes; :class:`_OverRead` when it does not fit."""
        parts: list[bytes] = []
        agent, counted = self.unanswered.agent, 0
        try:
            while True:
                try:
                    parts.append(await self.reader.readuntil(b"\n"))
                except asyncio.IncompleteReadError as exc:  # the end: a last line without \n
                    parts.append(exc.partial)
                except asyncio.LimitOverrunError as exc:  # no newline in the stream's buffer
                    if counted + exc.consumed > MAX_LINE:
                        raise ValueError("a line past MAX_LINE") from None
                    if not self.reading.claim(agent, exc.consumed):
                        raise _OverRead from None
                    counted += exc.consumed
                    parts.append(await self.reader.readexactly(exc.consumed))
                    continue
                if sum(map(len, parts)) > MAX_LINE + 1:
                    raise ValueError("a line past MAX_LINE")
                return b"".join(parts)
        finally:
            self.reading.give(agent, counted)

    async def __anext__(self) -> str:
        while True:
            await self.unanswered.room()
            try:
                line = await self._line()
            except _OverRead:  # said, not drained (an agent reading nothing): then hung up
                await self.out.write(_OVER_READ + "\n")
                raise StopAsyncIteration from None
            except (ValueError, ConnectionError):  # a line past MAX_LINE, a reset: hang up
                raise StopAsyncIteration from None
            if not line:
                await self.unanswered.answered()  # a half-close still gets its answers
                raise StopAsyncIteration
            text = line.decode("utf-8", "replace")
            before = self.unanswered.count
            refusals = self.unanswered.read(text)
            if refusals is None:
                if self.unanswered.count > before:  # a request: past a bound, wait
                    await self.unanswered.reserve()
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
        self.unanswered.drained()


async def run_session(
    caller: Caller,
    tools: dict[str, Tool],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    budget: McpBudget,
) -> None:
    """Serve one connection as ``caller`` until it ends (the writer is closed at the end);
    its requests are counted in ``budget``."""
    server = build_server(caller, tools)
    unanswered = _Unanswered(budget, caller.agent)
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
        unanswered.release(unanswered.reserved)
        writer.close()
