"""Anthropic Messages API (`POST /v1/messages`): JSON replies and the SSE event stream."""

from __future__ import annotations

import json
from typing import Any

from .script import Turn, chunks, count_assistant_messages, estimate_tokens
from .wire import Reply, SseEvent

OUTPUT_TOKENS = 12
"""Fixed output token count reported for every scripted turn."""


def tool_use_id(index: int, position: int) -> str:
    """A tool_use id that is stable across retries and unique within a conversation."""
    return f"toolu_hal{index:03d}{position:02d}"


class AnthropicMessages:
    """The Anthropic wire format."""

    name = "anthropic"

    def count_turns(self, body: dict[str, Any], anchor: str | None) -> int | None:
        """Assistant messages in `messages`."""
        return count_assistant_messages(body.get("messages") or [], anchor)

    def offered_tools(self, body: dict[str, Any]) -> set[str] | None:
        """Tool names; server tools without a name are ignored."""
        tools = body.get("tools")
        if not tools:
            return set()
        return {t["name"] for t in tools if "name" in t}

    def render(self, body: dict[str, Any], turn: Turn, index: int, model: str) -> Reply:
        """A message, or its stream when the request set `stream: true`."""
        message = self._message(body, turn, index, model)
        if not body.get("stream"):
            return Reply(body=message)
        return Reply(events=self._events(message, turn))

    def _message(self, body: dict[str, Any], turn: Turn, index: int, model: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if turn.text:
            content.append({"type": "text", "text": turn.text})
        for position, call in enumerate(turn.tool_calls):
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_use_id(index, position),
                    "name": call.name,
                    "input": call.input_dict(),
                }
            )
        return {
            "id": f"msg_hal{index:03d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", model),
            "content": content,
            "stop_reason": turn.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": estimate_tokens(body.get("messages", [])),
                "output_tokens": OUTPUT_TOKENS,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def _events(self, message: dict[str, Any], turn: Turn) -> list[SseEvent]:
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**message["usage"], "output_tokens": 1}
        events = [
            SseEvent({"type": "message_start", "message": start}, "message_start"),
            SseEvent({"type": "ping"}, "ping"),
        ]
        for index, block in enumerate(message["content"]):
            events.extend(_block_events(index, block))
        events.append(
            SseEvent(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": turn.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": OUTPUT_TOKENS},
                },
                "message_delta",
            )
        )
        events.append(SseEvent({"type": "message_stop"}, "message_stop"))
        return events


def _block_events(index: int, block: dict[str, Any]) -> list[SseEvent]:
    """content_block_start, its deltas and content_block_stop for one block."""
    if block["type"] == "text":
        opening: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in chunks(block["text"])]
    else:
        opening = {**block, "input": {}}
        # Split the JSON so clients must join partial_json pieces.
        deltas = [
            {"type": "input_json_delta", "partial_json": piece}
            for piece in chunks(json.dumps(block["input"]), 24)
        ]
    events = [
        SseEvent(
            {"type": "content_block_start", "index": index, "content_block": opening},
            "content_block_start",
        )
    ]
    events.extend(
        SseEvent({"type": "content_block_delta", "index": index, "delta": d}, "content_block_delta")
        for d in deltas
    )
    events.append(SseEvent({"type": "content_block_stop", "index": index}, "content_block_stop"))
    return events


def count_tokens_reply(body: dict[str, Any]) -> Reply:
    """`POST /v1/messages/count_tokens`."""
    return Reply(body={"input_tokens": estimate_tokens(body.get("messages", []))})
