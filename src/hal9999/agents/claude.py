"""Claude Code (``claude``) in print mode with ``stream-json`` output.

Command (flags from ``claude --help``, version 2.1)::

    claude -p --output-format stream-json --verbose --dangerously-skip-permissions
        [--model MODEL] [--resume SESSION_ID] [EXTRA_ARGS...]   < prompt file

``-p`` with no prompt argument reads the prompt from stdin (checked: the session transcript
holds the prompt file's exact bytes). The key is handed over as ``ANTHROPIC_API_KEY`` and
``settings.base_url`` becomes ``ANTHROPIC_BASE_URL``. ``IS_SANDBOX=1`` lets root use
``--dangerously-skip-permissions``; the ``DISABLE_*`` switches stop telemetry, error
reporting, the auto-updater and other non-essential traffic.

Output is one JSON object a line: ``system``/``init`` (session id), ``assistant`` and
``user`` messages whose ``content`` blocks are ``text``, ``tool_use`` and ``tool_result``,
and a final ``result`` with the run's total usage and cost.
"""

from __future__ import annotations

import posixpath
from typing import Any

from hal9999.agents.base import AgentContext, AgentLaunch, OutputParser
from hal9999.agents.custom import PresetAgent, agent_launch, key_forwarding
from hal9999.agents.mcp_config import claude_mcp_args, claude_mcp_env, claude_mcp_json
from hal9999.agents.parsing import (
    JsonLinesParser,
    as_cost,
    as_dict,
    as_int,
    content_text,
    error_event,
    text_event,
    tool_input,
)
from hal9999.events.models import Event, RawEvent, ToolCall, ToolResult, Usage

QUIET_ENV = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "IS_SANDBOX": "1",
}
"""Telemetry, error reporting and updates off; root allowed to skip permission prompts."""


class ClaudeCodeAgent(PresetAgent):
    """Anthropic's Claude Code CLI."""

    name = "claude"
    default_program = "claude"
    install_hint = "npm install -g @anthropic-ai/claude-code@2.1.330"
    tested_version = "2.1.330"
    supports_resume = True
    upstream = "https://api.anthropic.com"
    upstream_key_env = "ANTHROPIC_API_KEY"

    def build(self, ctx: AgentContext) -> AgentLaunch:
        """``claude -p`` reading the prompt from stdin, streaming JSON events."""
        settings = self.settings_for(ctx)
        argv = [self.program_for(settings), "-p", "--output-format", "stream-json", "--verbose"]
        argv.append("--dangerously-skip-permissions")
        if settings.model:
            argv += ["--model", settings.model]
        if ctx.resume_session:
            argv += ["--resume", ctx.resume_session]
        env = dict(QUIET_ENV)
        files: dict[str, bytes] = {}
        if ctx.mcp is not None:
            config_file = posixpath.join(ctx.home, ".hal", "mcp.json")
            files[config_file] = claude_mcp_json(ctx.mcp)
            argv += claude_mcp_args(ctx.mcp, config_file)
            env |= claude_mcp_env(ctx.mcp)
        argv += settings.extra_args
        if settings.base_url:
            env["ANTHROPIC_BASE_URL"] = settings.base_url
        key_env, secret_env = key_forwarding(settings, ["ANTHROPIC_API_KEY"])
        return agent_launch(ctx, argv, env=env | key_env, files=files, secret_env=secret_env)

    def parser(self) -> OutputParser:
        """A parser for ``--output-format stream-json``."""
        return ClaudeStreamParser()


class ClaudeStreamParser(JsonLinesParser):
    """Maps Claude Code's stream-json records to events."""

    def parse_record(self, record: dict[str, Any]) -> list[Event]:
        """One stream-json record."""
        kind = record.get("type")
        if kind == "system" and record.get("subtype") == "init":
            return self.session(record["session_id"])
        if kind == "assistant":
            return self._assistant(record)
        if kind == "user":
            return self._user(record)
        if kind == "result":
            return self._result(record)
        return [RawEvent(data=record)]

    def _assistant(self, record: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        for block in _blocks(record):
            kind = block.get("type")
            if kind == "text":
                events += text_event(block.get("text"))
            elif kind == "tool_use":
                call = ToolCall(
                    name=str(block["name"]),
                    call_id=block.get("id"),
                    input=tool_input(block.get("input")),
                )
                events.append(call)
            elif kind not in ("thinking", "redacted_thinking"):
                events.append(RawEvent(data=block))
        return events

    def _user(self, record: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        for block in _blocks(record):
            if block.get("type") == "tool_result":
                result = ToolResult(
                    call_id=block.get("tool_use_id"),
                    output=content_text(block.get("content")),
                    is_error=block.get("is_error") is True,
                )
                events.append(result)
        return events

    def _result(self, record: dict[str, Any]) -> list[Event]:
        usage = as_dict(record.get("usage"))
        events = self.session(record.get("session_id"))
        events.append(
            Usage(
                input_tokens=as_int(usage.get("input_tokens")),
                output_tokens=as_int(usage.get("output_tokens")),
                cache_read_tokens=as_int(usage.get("cache_read_input_tokens")),
                cache_write_tokens=as_int(usage.get("cache_creation_input_tokens")),
                cost_usd=as_cost(record.get("total_cost_usd")),
                total=True,
            )
        )
        if record.get("is_error") is True:
            detail = record.get("result") or record.get("subtype")
            events += error_event(f"claude reported an error: {detail}")
        return events


def _blocks(record: dict[str, Any]) -> list[dict[str, Any]]:
    content = as_dict(record.get("message")).get("content")
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, dict)]
