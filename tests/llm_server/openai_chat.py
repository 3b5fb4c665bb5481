"""OpenAI Chat Completions (`POST /v1/chat/completions`): JSON replies and the chunk stream."""

from __future__ import annotations

from typing import Any

from .script import Turn, chunks, count_assistant_messages, estimate_tokens
from .wire import Reply, SseEvent

COMPLETION_TOKENS = 12
"""Fixed completion token count reported for every scripted turn."""
CREATED = 1_700_000_000
"""A fixed `created` timestamp so recorded replies are reproducible."""


def tool_call_id(index: int, position: int) -> str:
    """A tool call id that is stable across retries and unique within a conversation."""
    return f"call_hal{index:03d}{position:02d}"


class OpenAIChat:
    """The Chat Completions wire format."""

    name = "chat"

    def count_turns(self, body: dict[str, Any], anchor: str | None) -> int | None:
        """Assistant messages in `messages`."""
        return count_assistant_messages(body.get("messages") or [], anchor)

    def offered_tools(self, body: dict[str, Any]) -> set[str] | None:
        """Function tool names (empty for a tool-less request such as a title request)."""
        return {
            t["function"]["name"] for t in body.get("tools") or [] if t.get("type") == "function"
        }

    def render(self, body: dict[str, Any], turn: Turn, index: int, model: str) -> Reply:
        """A chat.completion, or chat.completion.chunk events when `stream: true`."""
        model = body.get("model", model)
        usage = _usage(body)
        finish = "tool_calls" if turn.tool_calls else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
            if turn.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": tool_call_id(index, position),
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments_json()},
                    }
                    for position, call in enumerate(turn.tool_calls)
                ]
            return Reply(
                body={
                    "id": f"chatcmpl-hal{index:03d}",
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return Reply(events=_stream(turn, index, model, finish, usage if include_usage else None))


def _usage(body: dict[str, Any]) -> dict[str, int]:
    prompt = estimate_tokens(body.get("messages", []))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": prompt + COMPLETION_TOKENS,
    }


def _stream(
    turn: Turn, index: int, model: str, finish: str, usage: dict[str, int] | None
) -> list[SseEvent]:
    """Role chunk, content deltas, tool_calls deltas (name first, then arguments), finish,
    an optional usage chunk with empty choices, and `[DONE]`."""
    base = {
        "id": f"chatcmpl-hal{index:03d}",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> SseEvent:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return SseEvent({**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events.extend(chunk({"content": piece}) for piece in chunks(turn.text))
    for position, call in enumerate(turn.tool_calls):
        opening = {
            "index": position,
            "id": tool_call_id(index, position),
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        events.append(chunk({"tool_calls": [opening]}))
        events.extend(
            chunk({"tool_calls": [{"index": position, "function": {"arguments": piece}}]})
            for piece in chunks(call.arguments_json(), 24)
        )
    events.append(chunk({}, finish))
    if usage is not None:
        events.append(SseEvent({**base, "choices": [], "usage": usage}))
    events.append(SseEvent("[DONE]"))
    return events
