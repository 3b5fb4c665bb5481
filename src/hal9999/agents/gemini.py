"""Gemini CLI (``gemini``) in headless mode with ``stream-json`` output.

Command (flags from ``gemini --help``, version 0.61)::

    gemini --output-format stream-json --yolo [-m MODEL] [--resume SESSION_ID]
        [EXTRA_ARGS...]                                      < prompt file

A non-terminal stdin puts the CLI in headless mode and is the prompt (checked: the first
``message`` event echoes the prompt file's exact text). ``--resume`` accepts the session UUID
from the ``init`` event. The key is handed over as ``GEMINI_API_KEY`` and the base URL as
``GOOGLE_GEMINI_BASE_URL``; ``<home>/.gemini/settings.json`` turns auto-update, update
notices, usage statistics and telemetry off and, when a key is configured, pins the auth type
to ``gemini-api-key`` (without it a base URL selects the ``gateway`` auth type). Checked
end to end (``tests/e2e``) against the scripted server's ``streamGenerateContent`` endpoint.

``stream-json`` events (``packages/core/src/output``): ``init`` (session_id, model),
``message`` (role, content, ``delta`` for streamed chunks), ``tool_use`` (tool_name,
tool_id, parameters), ``tool_result`` (tool_id, status, output, error), ``error``
(severity, message) and ``result`` (status, stats with token totals).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from hal9999.agents.base import AgentContext, AgentLaunch, AgentSettings, OutputParser
from hal9999.agents.custom import PresetAgent, agent_launch, key_forwarding
from hal9999.agents.mcp_config import gemini_mcp
from hal9999.agents.parsing import (
    HeldText,
    JsonLinesParser,
    as_dict,
    as_int,
    error_event,
    text_event,
    tool_input,
)
from hal9999.events.models import Event, RawEvent, ToolCall, ToolResult, Usage

QUIET_ENV = {
    "GEMINI_TELEMETRY_ENABLED": "false",
    "GEMINI_CLI_TRUST_WORKSPACE": "true",
}
"""Telemetry off; the workspace trusted (needed when folder trust is enabled)."""


def gemini_settings(settings: AgentSettings) -> dict[str, Any]:
    """The ``settings.json`` hal writes into ``<home>/.gemini``."""
    config: dict[str, Any] = {
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
    }
    if settings.api_key_env:
        config["security"] = {"auth": {"selectedType": "gemini-api-key"}}
    return config


class GeminiAgent(PresetAgent):
    """Google's Gemini CLI."""

    name = "gemini"
    default_program = "gemini"
    install_hint = "npm install -g @google/gemini-cli@0.61.0"
    tested_version = "0.61.0"
    supports_resume = True
    upstream = "https://generativelanguage.googleapis.com"
    upstream_key_env = "GEMINI_API_KEY"

    def build(self, ctx: AgentContext) -> AgentLaunch:
        """Headless ``gemini`` reading the prompt from stdin."""
        settings = self.settings_for(ctx)
        argv = [self.program_for(settings), "--output-format", "stream-json", "--yolo"]
        if settings.model:
            argv += ["-m", settings.model]
        if ctx.resume_session:
            argv += ["--resume", ctx.resume_session]
        argv += settings.extra_args
        env = dict(QUIET_ENV)
        if settings.base_url:
            env["GOOGLE_GEMINI_BASE_URL"] = settings.base_url
        key_env, secret_env = key_forwarding(settings, ["GEMINI_API_KEY"])
        path = posixpath.join(ctx.home, ".gemini", "settings.json")
        config = gemini_settings(settings)
        if ctx.mcp is not None:
            config["mcpServers"] = gemini_mcp(ctx.mcp)
        files = {path: json.dumps(config, indent=2).encode()}
        return agent_launch(ctx, argv, env=env | key_env, files=files, secret_env=secret_env)

    def parser(self) -> OutputParser:
        """A parser for ``--output-format stream-json``."""
        return GeminiStreamParser()


class GeminiStreamParser(JsonLinesParser):
    """Maps Gemini CLI stream-json events to events; streamed text chunks are joined."""

    def __init__(self) -> None:
        super().__init__()
        self._text = HeldText()

    def parse_record(self, record: dict[str, Any]) -> list[Event]:
        """One stream-json event."""
        kind = record.get("type")
        if kind == "message":
            if record.get("role") != "assistant":
                return []
            content = record["content"]
            if not isinstance(content, str):
                raise TypeError("message content is not text")
            if record.get("delta") is True:
                self._text.append(content)
                return []
            return [*self.finish(), *text_event(content)]
        events = self.finish()
        if kind == "init":
            events += self.session(record["session_id"])
        elif kind == "tool_use":
            events.append(
                ToolCall(
                    name=str(record["tool_name"]),
                    call_id=record.get("tool_id"),
                    input=tool_input(record.get("parameters")),
                )
            )
        elif kind == "tool_result":
            failed = record.get("status") == "error"
            output = record.get("output")
            if failed and not output:
                output = as_dict(record.get("error")).get("message")
            events.append(
                ToolResult(call_id=record.get("tool_id"), output=str(output or ""), is_error=failed)
            )
        elif kind == "error":
            events += error_event(record.get("message"), level=str(record.get("severity")))
        elif kind == "result":
            events += self._result(record)
        else:
            events.append(RawEvent(data=record))
        return events

    def _result(self, record: dict[str, Any]) -> list[Event]:
        stats = as_dict(record.get("stats"))
        cached = as_int(stats.get("cached"))
        uncached = stats.get("input")
        if isinstance(uncached, int):
            # The agent's claim, bounded like every other figure: taken bare, 10**30
            # reached the store (past its integers) and -5 lowered the totals.
            uncached = as_int(uncached)
        else:
            uncached = max(as_int(stats.get("input_tokens")) - cached, 0)
        events: list[Event] = [
            Usage(
                input_tokens=uncached,
                output_tokens=as_int(stats.get("output_tokens")),
                cache_read_tokens=cached,
                total=True,
            )
        ]
        if record.get("status") == "error":
            events += error_event(as_dict(record.get("error")).get("message"))
        return events

    def finish(self) -> list[Event]:
        """The assistant text streamed since the last other event, as one AgentText."""
        return text_event(self._text.take())
