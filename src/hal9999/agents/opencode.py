"""opencode (``opencode run``) with JSON event output.

Command (flags from ``opencode run --help``, version 1.18)::

    opencode run --format json [--model PROVIDER/MODEL] [--session SESSION_ID]
        [EXTRA_ARGS...]                                      < prompt file

``opencode run`` reads stdin when it is not a terminal and uses it as the message when none
is given on the command line (checked against a local server: the request carried the
prompt file's exact text; a message given as an argument is re-quoted by opencode when it
contains spaces, so stdin is the faithful path).

Configuration goes in ``OPENCODE_CONFIG_CONTENT``: ``"permission": "allow"`` (``run``
auto-rejects anything that would ask), ``autoupdate`` off, sharing disabled, ``snapshot``
off (undo history hal does not use), and with a base
URL an OpenAI-compatible ``hal`` provider (``@ai-sdk/openai-compatible``, ``options.baseURL``)
whose model ids are the configured model. The key is referenced as ``{env:NAME}`` (opencode's
config variable syntax) under the provider's ``options.apiKey``, so it needs no renaming.
The ``OPENCODE_DISABLE_*`` switches stop update checks, model-list and LSP downloads,
sharing, default plugins and reading Claude Code's files.

Output lines are ``{"type", "timestamp", "sessionID", "part"}`` with types ``step_start``,
``text``, ``reasoning``, ``tool_use`` (a finished tool part: ``tool``, ``callID``,
``state.input/output/status/error``), ``step_finish`` (``tokens``, ``cost``) and ``error``.
"""

from __future__ import annotations

import json
from typing import Any

from hal9999.agents.base import AgentContext, AgentLaunch, AgentSettings, OutputParser
from hal9999.agents.custom import PresetAgent, agent_launch, checked_env_name
from hal9999.agents.mcp_config import opencode_mcp
from hal9999.agents.parsing import (
    JsonLinesParser,
    as_cost,
    as_dict,
    as_int,
    error_event,
    text_event,
    tool_input,
)
from hal9999.errors import ConfigError
from hal9999.events.models import Event, RawEvent, ToolCall, ToolResult, Usage

QUIET_ENV = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
}
"""Update checks, downloads, sharing and default plugins off."""

PROVIDER = "hal"
"""Id of the provider hal defines when a base URL is configured."""


def opencode_config(settings: AgentSettings) -> tuple[dict[str, Any], str | None]:
    """The config JSON and the ``--model`` value for ``settings``."""
    config: dict[str, Any] = {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "permission": "allow",
        # Snapshots back opencode's undo; hal keeps the run's changes as a branch instead,
        # and taking them costs a git pass over the workspace at every step.
        "snapshot": False,
    }
    key = f"{{env:{checked_env_name(settings.api_key_env)}}}" if settings.api_key_env else None
    if settings.base_url:
        if not settings.model:
            raise ConfigError(
                "opencode with a base_url needs a model",
                hint='set model for the agent, e.g. model = "gpt-4.1"',
            )
        options: dict[str, Any] = {"baseURL": settings.base_url}
        if key:
            options["apiKey"] = key
        config["provider"] = {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "hal",
                "options": options,
                "models": {settings.model: {"name": settings.model}},
            }
        }
        model = f"{PROVIDER}/{settings.model}"
        config["model"] = model
        return config, model
    if key:
        provider, _, model_id = (settings.model or "").partition("/")
        if not provider or not model_id:
            raise ConfigError(
                "opencode needs the model as PROVIDER/MODEL to know where the API key goes",
                hint='e.g. model = "anthropic/claude-sonnet-4-5"',
            )
        config["provider"] = {provider: {"options": {"apiKey": key}}}
    return config, settings.model


class OpencodeAgent(PresetAgent):
    """The opencode CLI."""

    name = "opencode"
    default_program = "opencode"
    install_hint = "npm install -g opencode-ai@1.18.33"
    tested_version = "1.18.33"
    supports_resume = True
    upstream = "https://api.openai.com/v1"
    upstream_key_env = "OPENAI_API_KEY"

    model_names_provider = True

    def build(self, ctx: AgentContext) -> AgentLaunch:
        """``opencode run`` reading the message from stdin."""
        settings = self.settings_for(ctx)
        config, model = opencode_config(settings)
        if ctx.mcp is not None:
            config["mcp"] = opencode_mcp(ctx.mcp)
        argv = [self.program_for(settings), "run", "--format", "json"]
        if model:
            argv += ["--model", model]
        if ctx.resume_session:
            argv += ["--session", ctx.resume_session]
        argv += settings.extra_args
        env = QUIET_ENV | {"OPENCODE_CONFIG_CONTENT": json.dumps(config)}
        secret_env = (settings.api_key_env,) if settings.api_key_env else ()
        return agent_launch(ctx, argv, env=env, secret_env=secret_env)

    def parser(self) -> OutputParser:
        """A parser for ``--format json``."""
        return OpencodeJsonParser()


class OpencodeJsonParser(JsonLinesParser):
    """Maps ``opencode run --format json`` lines to events."""

    def parse_record(self, record: dict[str, Any]) -> list[Event]:
        """One JSON event line."""
        events = self.session(record.get("sessionID"))
        kind = record.get("type")
        part = as_dict(record.get("part"))
        if kind == "text":
            events += text_event(part.get("text"))
        elif kind == "tool_use":
            state = as_dict(part["state"])
            failed = state.get("status") == "error"
            output = state.get("error") if failed else state.get("output")
            events += [
                ToolCall(
                    name=str(part["tool"]),
                    call_id=part.get("callID"),
                    input=tool_input(state.get("input")),
                ),
                ToolResult(call_id=part.get("callID"), output=str(output or ""), is_error=failed),
            ]
        elif kind == "step_finish":
            tokens = as_dict(part["tokens"])
            cache = as_dict(tokens.get("cache"))
            events.append(
                Usage(
                    input_tokens=as_int(tokens.get("input")),
                    # Reasoning tokens are billed as output; opencode counts them apart.
                    output_tokens=as_int(tokens.get("output")) + as_int(tokens.get("reasoning")),
                    cache_read_tokens=as_int(cache.get("read")),
                    cache_write_tokens=as_int(cache.get("write")),
                    cost_usd=as_cost(part.get("cost")),
                )
            )
        elif kind == "error":
            error = as_dict(record.get("error"))
            message = as_dict(error.get("data")).get("message") or error.get("name")
            events += error_event(message)
        elif kind not in ("step_start", "reasoning"):
            events.append(RawEvent(data=record))
        return events
