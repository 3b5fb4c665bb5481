"""goose (``goose run``) with ``stream-json`` output.

Command (``crates/goose-cli/src/cli.rs``: ``run`` takes ``-i/--instructions FILE``,
``--output-format text|json|stream-json``, ``--provider``, ``--model``, ``--with-builtin``)::

    goose run --instructions PROMPT_FILE --output-format stream-json --with-builtin developer
        [--provider PROVIDER] [--model MODEL] [EXTRA_ARGS...]

``settings.model`` is ``PROVIDER/MODEL`` (``anthropic/claude-sonnet-4-5``) or a bare model
name. With a base URL the provider defaults to ``openai`` and the URL is split into
``OPENAI_HOST`` (origin) and ``OPENAI_BASE_PATH`` (path + ``/chat/completions``), which is
how goose's OpenAI provider takes a custom endpoint. The key is handed over under the
provider's variable (:data:`PROVIDER_KEY_VARS`), else as ``GOOSE_PROVIDER__API_KEY``.
Environment (documented in goose's ``environment-variables`` guide): ``GOOSE_MODE=auto`` (no
approval prompts), ``GOOSE_DISABLE_KEYRING`` (no system keyring in a sandbox),
``GOOSE_TELEMETRY_ENABLED=false``, ``GOOSE_DISABLE_SESSION_NAMING`` (no extra model call).

Resume is not offered: goose's stream-json output carries no session id (it is only in the
text banner goose prints first, which this parser treats as noise).

Lines (``crates/goose-cli/src/session/mod.rs``, ``StreamEvent``): ``message`` (a goose
``Message``: role and ``content`` items ``text``, ``toolRequest`` with ``toolCall``,
``toolResponse`` with ``toolResult``), ``notification``, ``error`` and ``complete`` (token
totals and, in newer versions, ``cost_usd``). Streamed text arrives as several messages with
the same id; they are joined into one AgentText.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from hal9999.agents.base import AgentContext, AgentLaunch, OutputParser
from hal9999.agents.custom import PresetAgent, agent_launch, key_forwarding
from hal9999.agents.parsing import (
    HeldText,
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
    "GOOSE_MODE": "auto",
    "GOOSE_DISABLE_KEYRING": "1",
    "GOOSE_TELEMETRY_ENABLED": "false",
    "GOOSE_DISABLE_SESSION_NAMING": "true",
}
"""Autonomous mode, file-based secrets, telemetry and session naming off."""

PROVIDER_KEY_VARS = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "google": "GOOGLE_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "groq": "GROQ_API_KEY",
    "xai": "XAI_API_KEY",
}
"""The variable each goose provider reads its key from."""


class GooseAgent(PresetAgent):
    """Block's goose CLI."""

    name = "goose"
    default_program = "goose"
    install_hint = "see https://block.github.io/goose/docs/getting-started/installation"
    supports_resume = False

    def build(self, ctx: AgentContext) -> AgentLaunch:
        """``goose run`` on the prompt file, streaming JSON."""
        settings = self.settings_for(ctx)
        provider, model = _split_model(settings.model)
        env = dict(QUIET_ENV)
        if settings.base_url:
            provider = provider or "openai"
            parts = urlsplit(settings.base_url)
            env["OPENAI_HOST"] = f"{parts.scheme}://{parts.netloc}"
            env["OPENAI_BASE_PATH"] = "/".join(
                p for p in (parts.path.strip("/"), "chat/completions") if p
            )
        argv = [self.program_for(settings), "run", "--instructions", ctx.prompt_file]
        argv += ["--output-format", "stream-json", "--with-builtin", "developer"]
        if provider:
            argv += ["--provider", provider]
            env["GOOSE_PROVIDER"] = provider
        if model:
            argv += ["--model", model]
            env["GOOSE_MODEL"] = model
        argv += settings.extra_args
        key_var = PROVIDER_KEY_VARS.get(provider, "GOOSE_PROVIDER__API_KEY")
        key_env, secret_env = key_forwarding(settings, [key_var])
        return agent_launch(ctx, argv, env=env | key_env, secret_env=secret_env)

    def parser(self) -> OutputParser:
        """A parser for ``--output-format stream-json``."""
        return GooseStreamParser()


class GooseStreamParser(JsonLinesParser):
    """Maps goose stream-json lines to events."""

    def __init__(self) -> None:
        super().__init__()
        self._text = HeldText()
        self._text_id: object = None

    def parse_record(self, record: dict[str, Any]) -> list[Event]:
        """One stream-json line."""
        kind = record.get("type")
        if kind == "message":
            return self._message(as_dict(record["message"]))
        events = self.finish()
        if kind == "complete":
            if not any(key in record for key in ("input_tokens", "output_tokens")):
                return [*events, RawEvent(data=record)]
            events.append(
                Usage(
                    input_tokens=as_int(record.get("input_tokens")),
                    output_tokens=as_int(record.get("output_tokens")),
                    cache_read_tokens=as_int(record.get("cache_read_input_tokens")),
                    cache_write_tokens=as_int(record.get("cache_write_input_tokens")),
                    cost_usd=as_cost(record.get("cost_usd")),
                    total=True,
                )
            )
        elif kind == "error":
            events += error_event(record.get("error"))
        elif kind != "notification":
            events.append(RawEvent(data=record))
        return events

    def _message(self, message: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if message.get("id") != self._text_id:
            events += self.finish()
        for item in message.get("content") or []:
            kind = as_dict(item).get("type")
            if kind == "text" and message.get("role") == "assistant":
                text = item.get("text")
                if isinstance(text, str):
                    self._text.append(text)
                    self._text_id = message.get("id")
            elif kind == "toolRequest":
                events += self.finish()
                events += _tool_request(item)
            elif kind == "toolResponse":
                events += self.finish()
                events.append(_tool_response(item))
        return events

    def finish(self) -> list[Event]:
        """The assistant text gathered for the current message id, as one AgentText."""
        self._text_id = None
        return text_event(self._text.take())


def _split_model(model: str | None) -> tuple[str, str]:
    """``PROVIDER/MODEL`` into its parts; a bare name has no provider."""
    if not model:
        return "", ""
    provider, sep, name = model.partition("/")
    return (provider, name) if sep else ("", model)


def _tool_request(item: dict[str, Any]) -> list[Event]:
    call = as_dict(item.get("toolCall"))
    if call.get("status") == "error":
        failed = ToolCall(name="invalid_tool_call", call_id=item.get("id"))
        return [
            failed,
            ToolResult(call_id=item.get("id"), output=str(call.get("error")), is_error=True),
        ]
    value = as_dict(call["value"])
    name = str(value["name"])
    return [ToolCall(name=name, call_id=item.get("id"), input=tool_input(value.get("arguments")))]


def _tool_response(item: dict[str, Any]) -> ToolResult:
    result = as_dict(item.get("toolResult"))
    failed = result.get("status") == "error"
    value = result.get("value")
    # Older goose sends a bare list of content blocks, newer an MCP CallToolResult.
    if isinstance(value, dict):
        output = content_text(value.get("content"))
        failed = failed or value.get("isError") is True
    elif value is not None:
        output = content_text(value)
    else:
        output = str(result.get("error") or "")
    return ToolResult(call_id=item.get("id"), output=output, is_error=failed)
