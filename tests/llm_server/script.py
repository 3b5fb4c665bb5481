"""What the scripted LLM says: a Script is a list of Turns, each text or tool calls.

The server keeps no conversation state. Each wire format counts how many assistant turns the
request already carries and the Script answers with the turn at that index, so a retried or
resumed request gets the same reply it got the first time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

ToolKind = Literal["function", "custom"]
"""`function` takes a JSON object; `custom` (OpenAI Responses freeform tools) takes raw text."""


@dataclass(frozen=True)
class ToolCall:
    """One tool invocation the model asks for."""

    name: str
    input: dict[str, Any] | str
    kind: ToolKind = "function"

    def __post_init__(self) -> None:
        if self.kind == "function" and not isinstance(self.input, dict):
            raise TypeError(f"function tool {self.name!r} needs a dict input")
        if self.kind == "custom" and not isinstance(self.input, str):
            raise TypeError(f"custom tool {self.name!r} needs a str input")

    def arguments_json(self) -> str:
        """The input as the JSON string the OpenAI formats put in `arguments`."""
        if isinstance(self.input, str):
            return self.input
        return json.dumps(self.input)

    def input_dict(self) -> dict[str, Any]:
        """The input as a dict; a custom tool's text is wrapped as {"input": text}."""
        if isinstance(self.input, str):
            return {"input": self.input}
        return self.input


@dataclass(frozen=True)
class Turn:
    """One assistant reply: optional text followed by zero or more tool calls."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()

    @classmethod
    def say(cls, text: str) -> Turn:
        """A reply made of text only; it ends the agent's loop."""
        return cls(text=text)

    @classmethod
    def call(cls, name: str, /, **input: Any) -> Turn:
        """A reply made of a single function tool call with keyword arguments as input."""
        return cls(tool_calls=(ToolCall(name, dict(input)),))

    @classmethod
    def calls(cls, *tool_calls: ToolCall, text: str = "") -> Turn:
        """A reply with several (parallel) tool calls."""
        return cls(text=text, tool_calls=tuple(tool_calls))

    @property
    def stop_reason(self) -> Literal["tool_use", "end_turn"]:
        """Anthropic's stop reason for this turn."""
        return "tool_use" if self.tool_calls else "end_turn"


@dataclass
class Script:
    """An ordered conversation the server replays; past the end it repeats `final`.

    `side_reply` answers requests that cannot be the scripted conversation: those that offer
    none of the tools the selected turn calls (title generation, quota probes), and, when
    `anchor` is set, those that do not carry the anchor text (commit messages). They are
    still recorded.

    `anchor` is for agents that put canned exchanges before the task (aider sends example
    and "files added" user/assistant pairs): only assistant turns after the first
    non-assistant message whose text starts with the anchor (usually the prompt) are
    counted. "Starts with" keeps out requests that merely quote the prompt, such as aider's
    commit-message request.
    """

    turns: list[Turn]
    final: Turn = field(default_factory=lambda: Turn.say("Done."))
    side_reply: Turn = field(default_factory=lambda: Turn.say("ok"))
    model: str = "scripted-model"
    anchor: str | None = None
    max_model_calls: int = 100
    """Model calls past this many get HTTP 400, so an agent stuck in a loop stops."""
    latency_s: float = 0.0
    """Seconds each model call waits before its answer starts (a slow upstream)."""

    def turn_at(self, index: int) -> Turn:
        """The turn to send when the request already carries `index` assistant turns."""
        if 0 <= index < len(self.turns):
            return self.turns[index]
        return self.final

    def select(self, index: int, offered_tools: set[str] | None) -> tuple[Turn, bool]:
        """Pick the reply for a request; the flag is True for a side request.

        `offered_tools` is None when the wire format cannot tell (then no request is a side
        request).
        """
        turn = self.turn_at(index)
        if offered_tools is None or not turn.tool_calls:
            return turn, False
        if all(call.name in offered_tools for call in turn.tool_calls):
            return turn, False
        return self.side_reply, True


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or a list of parts with `text` fields."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(message_text(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text") or "") + message_text(content.get("content"))
    return ""


def count_assistant_messages(messages: list[Any], anchor: str | None) -> int | None:
    """Assistant messages in a role-tagged list, counted after `anchor` when it is set.

    Returns None when `anchor` is set and no non-assistant message contains it.
    """
    start = 0
    if anchor is not None:
        found = [
            i
            for i, m in enumerate(messages)
            if isinstance(m, dict)
            and m.get("role") != "assistant"
            and message_text(m.get("content")).lstrip().startswith(anchor)
        ]
        if not found:
            return None
        start = found[0]
    return sum(1 for m in messages[start:] if isinstance(m, dict) and m.get("role") == "assistant")


def estimate_tokens(body: Any) -> int:
    """A stable, cheap token count for usage fields: one token per four JSON characters."""
    return max(1, len(json.dumps(body, sort_keys=True)) // 4)


def chunks(text: str, size: int = 16) -> list[str]:
    """Split text into pieces so streaming clients see several deltas."""
    if not text:
        return []
    return [text[i : i + size] for i in range(0, len(text), size)]
