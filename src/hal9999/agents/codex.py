"""OpenAI Codex CLI (``codex exec``) with JSONL output.

Command (flags from ``codex exec --help`` and ``codex exec resume --help``, version 0.169)::

    codex exec --json --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox
        [-m MODEL] [EXTRA_ARGS...] -                         < prompt file
    codex exec resume --json ... [-m MODEL] [EXTRA_ARGS...] SESSION_ID -

``-`` makes Codex read the prompt from stdin. ``CODEX_HOME`` is ``<home>/.codex`` and hal
writes its ``config.toml`` (every key accepted by ``--strict-config``):

* update checks, analytics and feedback off;
* ``[features]`` ``plugins``, ``remote_plugin`` and ``apps`` off: each looks a host up at
  start (``api.github.com``, ``chatgpt.com``) and Codex waits for it (~5 s without network);
* ``unbounded_connection_retries`` off: on by default, a refused connection is retried
  forever ("Reconnecting... waiting for network"); off, Codex fails at once, which is what an
  unattended run needs;
* when a base URL or key variable is configured, a ``hal`` model provider
  (``wire_api = "responses"``, the only wire API current Codex accepts) whose ``env_key`` is
  the host variable's own name, so the key needs no renaming.

Codex picks its tool set from the model's metadata: with a model name it does not know it
offers no ``apply_patch`` tool, so point it at a model slug it knows (e.g. ``gpt-5.5``).
Any of these can be switched back with ``extra_args``, e.g. ``["-c", "features.apps=true"]``.

The JSONL schema is ``codex-rs/exec/src/exec_events.rs``: ``thread.started`` (the id
``codex exec resume`` takes), ``turn.*``, ``item.started``/``item.updated``/
``item.completed`` carrying typed items, and ``error``.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from hal9999.agents.base import AgentContext, AgentLaunch, AgentSettings, McpServer, OutputParser
from hal9999.agents.custom import PresetAgent, agent_launch, checked_env_name
from hal9999.agents.mcp_config import codex_mcp_toml
from hal9999.agents.parsing import (
    JsonLinesParser,
    as_dict,
    as_int,
    content_text,
    error_event,
    text_event,
    tool_input,
)
from hal9999.events.models import Event, RawEvent, ToolCall, ToolResult, Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""Base URL of the ``hal`` provider when only a key variable is configured."""

FEATURES_OFF = ("plugins", "remote_plugin", "apps", "unbounded_connection_retries")
"""Codex features hal turns off: start-up lookups and retrying a dead endpoint forever."""


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string once DEL is escaped too.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def codex_config(settings: AgentSettings, mcp: McpServer | None = None) -> str:
    """The ``config.toml`` hal writes into ``CODEX_HOME``."""
    root = ["check_for_update_on_startup = false"]
    tables = ["[analytics]", "enabled = false", "", "[feedback]", "enabled = false"]
    tables += ["", "[features]", *(f"{name} = false" for name in FEATURES_OFF)]
    if settings.base_url or settings.api_key_env:
        root.append('model_provider = "hal"')
        tables += ["", "[model_providers.hal]", 'name = "hal"']
        tables.append(f"base_url = {_toml_str(settings.base_url or DEFAULT_BASE_URL)}")
        if settings.api_key_env:
            tables.append(f"env_key = {_toml_str(checked_env_name(settings.api_key_env))}")
        tables.append('wire_api = "responses"')
    if mcp is not None:
        tables += ["", codex_mcp_toml(mcp)]
    return "\n".join([*root, "", *tables]) + "\n"


MAX_OPEN_ITEMS = 4096
"""Started tool items the parser remembers until they complete; an agent that starts items
and never completes them grew the set with every line it printed, in the supervisor."""
MAX_ITEM_ID = 1024
"""Longest item id remembered (Codex's are ``item_<n>``); a longer one's completion repeats
its call."""


class CodexAgent(PresetAgent):
    """OpenAI's Codex CLI."""

    name = "codex"
    default_program = "codex"
    install_hint = "npm install -g @openai/codex@0.169.0"
    tested_version = "0.169.0"
    supports_resume = True
    upstream = "https://api.openai.com/v1"
    upstream_key_env = "OPENAI_API_KEY"

    def build(self, ctx: AgentContext) -> AgentLaunch:
        """``codex exec`` (or ``exec resume``) reading the prompt from stdin."""
        settings = self.settings_for(ctx)
        argv = [self.program_for(settings), "exec"]
        if ctx.resume_session:
            argv.append("resume")
        argv += ["--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
        if settings.model:
            argv += ["-m", settings.model]
        argv += settings.extra_args
        if ctx.resume_session:
            argv.append(ctx.resume_session)
        argv.append("-")
        codex_home = posixpath.join(ctx.home, ".codex")
        config = codex_config(settings, ctx.mcp)
        files = {posixpath.join(codex_home, "config.toml"): config.encode()}
        secret_env = (settings.api_key_env,) if settings.api_key_env else ()
        return agent_launch(
            ctx, argv, env={"CODEX_HOME": codex_home}, files=files, secret_env=secret_env
        )

    def parser(self) -> OutputParser:
        """A parser for ``codex exec --json``."""
        return CodexJsonParser()


class CodexJsonParser(JsonLinesParser):
    """Maps ``codex exec --json`` thread events to events."""

    def __init__(self) -> None:
        super().__init__()
        self._started: dict[str, None] = {}
        """Ids of the tool items started and not completed yet, oldest first (at most
        :data:`MAX_OPEN_ITEMS`)."""

    def parse_record(self, record: dict[str, Any]) -> list[Event]:
        """One thread event."""
        kind = record.get("type")
        if kind == "thread.started":
            return self.session(record["thread_id"])
        if kind == "turn.started":
            return []
        if kind == "turn.completed":
            usage = as_dict(record["usage"])
            cached = as_int(usage.get("cached_input_tokens"))
            return [
                Usage(
                    input_tokens=max(as_int(usage.get("input_tokens")) - cached, 0),
                    output_tokens=as_int(usage.get("output_tokens")),
                    cache_read_tokens=cached,
                    total=True,
                )
            ]
        if kind == "turn.failed":
            return error_event(as_dict(record.get("error")).get("message"))
        if kind == "error":
            return error_event(record.get("message"))
        if kind == "item.started":
            return self._started_item(as_dict(record["item"]))
        if kind == "item.completed":
            return self._completed_item(as_dict(record["item"]), record)
        if kind == "item.updated":
            return []
        return [RawEvent(data=record)]

    def _call(self, item: dict[str, Any]) -> ToolCall | None:
        kind = item.get("type")
        if kind == "command_execution":
            return ToolCall(name="shell", call_id=item["id"], input={"command": item["command"]})
        if kind == "mcp_tool_call":
            name = f"{item.get('server')}.{item.get('tool')}"
            return ToolCall(name=name, call_id=item["id"], input=tool_input(item.get("arguments")))
        if kind == "web_search":
            return ToolCall(name="web_search", call_id=item["id"], input={"query": item["query"]})
        return None

    def _started_item(self, item: dict[str, Any]) -> list[Event]:
        call = self._call(item)
        if call is None:
            return []
        item_id = item["id"]
        if isinstance(item_id, str) and len(item_id) <= MAX_ITEM_ID:
            self._started[item_id] = None
            if len(self._started) > MAX_OPEN_ITEMS:  # its completion repeats the call
                del self._started[next(iter(self._started))]
        return [call]

    def _completed_item(self, item: dict[str, Any], record: dict[str, Any]) -> list[Event]:
        kind = item.get("type")
        if kind == "agent_message":
            return text_event(item.get("text"))
        if kind == "reasoning":
            return []
        if kind == "error":
            return error_event(item.get("message"), level="warning")
        if kind == "file_change":
            changes = item.get("changes")
            summary = (
                "\n".join(
                    f"{change.get('kind')} {change.get('path')}"
                    for change in changes
                    if isinstance(change, dict)
                )
                if isinstance(changes, list)
                else ""
            )
            return [
                ToolCall(name="apply_patch", call_id=item["id"], input={"changes": changes}),
                ToolResult(
                    call_id=item["id"], output=summary, is_error=item.get("status") == "failed"
                ),
            ]
        call = self._call(item)
        if call is None:
            return [RawEvent(data=record)]
        item_id = item["id"]
        started = isinstance(item_id, str) and self._started.pop(item_id, 0) is None
        events: list[Event] = [] if started else [call]
        events.append(self._result(item))
        return events

    def _result(self, item: dict[str, Any]) -> ToolResult:
        failed = item.get("status") in ("failed", "declined")
        if item.get("type") == "command_execution":
            exit_code = item.get("exit_code")
            return ToolResult(
                call_id=item["id"],
                output=str(item.get("aggregated_output") or ""),
                is_error=failed or (isinstance(exit_code, int) and exit_code != 0),
            )
        if item.get("type") == "mcp_tool_call":
            error = as_dict(item.get("error")).get("message")
            output = (
                error
                if isinstance(error, str)
                else content_text(as_dict(item.get("result")).get("content"))
            )
            return ToolResult(call_id=item["id"], output=output, is_error=failed or bool(error))
        return ToolResult(call_id=item["id"], is_error=failed)
