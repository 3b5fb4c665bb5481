"""OpenAI Responses (`POST /v1/responses`): the response object and its SSE event stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .script import ToolCall, Turn, chunks, estimate_tokens, message_text
from .wire import Reply, SseEvent

OUTPUT_TOKENS = 12
"""Fixed output token count reported for every scripted turn."""
CREATED = 1_700_000_000
"""A fixed `created_at` timestamp so recorded replies are reproducible."""

ASSISTANT_ITEMS = {"function_call", "custom_tool_call", "reasoning", "local_shell_call"}
"""Input item types only the model produces (besides assistant messages)."""


def _is_assistant_item(item: dict[str, Any]) -> bool:
    if item.get("type") in ASSISTANT_ITEMS:
        return True
    return item.get("type", "message") == "message" and item.get("role") == "assistant"


class OpenAIResponses:
    """The Responses wire format."""

    name = "responses"

    def count_turns(self, body: dict[str, Any], anchor: str | None) -> int | None:
        """Runs of model-produced items in `input` (after `anchor` when set).

        Parallel calls (`fc1, fc2, out1, out2`) form one run, so one scripted turn with N
        calls counts once, like an assistant message in the other formats.
        """
        items = body.get("input")
        if not isinstance(items, list):
            items = [{"role": "user", "content": items or ""}]
        items = [item for item in items if isinstance(item, dict)]
        if anchor is not None:
            found = [
                i
                for i, item in enumerate(items)
                if not _is_assistant_item(item)
                and message_text(item.get("content")).lstrip().startswith(anchor)
            ]
            if not found:
                return None
            items = items[found[0] :]
        # A turn is a run of model items; it stays open while some of its calls still await
        # their outputs, so parallel calls (fc1, fc2, out1, out2) count once and sequential
        # ones (fc1, out1, fc2, out2) twice.
        turns, in_run, pending = 0, False, set[str]()
        for item in items:
            if _is_assistant_item(item):
                if not in_run:
                    turns, in_run = turns + 1, True
                if item.get("type") in ("function_call", "custom_tool_call"):
                    pending.add(str(item.get("call_id")))
            elif item.get("type") in ("function_call_output", "custom_tool_call_output"):
                pending.discard(str(item.get("call_id")))
                in_run = in_run and bool(pending)
            else:
                in_run = False
        return turns

    def offered_tools(self, body: dict[str, Any]) -> set[str] | None:
        """Names of function and custom tools (built-ins like web_search have no name)."""
        tools = body.get("tools")
        if not tools:
            return set()
        names = {t["name"] for t in tools if "name" in t}
        # A namespace (Codex's MCP servers) offers its tools as `<namespace>__<tool>`.
        for ns in (t for t in tools if t.get("type") == "namespace"):
            names |= {f"{ns['name']}__{t['name']}" for t in ns.get("tools", []) if "name" in t}
        return names

    def render(self, body: dict[str, Any], turn: Turn, index: int, model: str) -> Reply:
        """The response object, or its event stream when `stream: true`."""
        model = body.get("model", model)
        items = _output_items(turn, index)
        _split_namespaces(items, body)
        response = _response(body, index, model, items, status="completed")
        if not body.get("stream"):
            return Reply(body=response)
        return Reply(events=_stream(body, index, model, items, response))


def _output_items(turn: Turn, index: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if turn.text:
        items.append(
            {
                "type": "message",
                "id": f"msg_hal{index:03d}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": turn.text, "annotations": []}],
            }
        )
    items.extend(_call_item(call, index, position) for position, call in enumerate(turn.tool_calls))
    return items


def _split_namespaces(items: list[dict[str, Any]], body: dict[str, Any]) -> None:
    """A call of `<namespace>__<tool>` goes out as `tool` in `namespace` (how the Responses
    API names a function of a namespace tool)."""
    spaces = [t["name"] for t in body.get("tools") or [] if t.get("type") == "namespace"]
    for item in items:
        for ns in spaces:
            if item.get("type") == "function_call" and item["name"].startswith(f"{ns}__"):
                item["name"], item["namespace"] = item["name"][len(ns) + 2 :], ns


def _call_item(call: ToolCall, index: int, position: int) -> dict[str, Any]:
    suffix = f"{index:03d}{position:02d}"
    if call.kind == "custom":
        return {
            "type": "custom_tool_call",
            "id": f"ctc_hal{suffix}",
            "call_id": f"call_hal{suffix}",
            "name": call.name,
            "input": call.arguments_json(),
            "status": "completed",
        }
    return {
        "type": "function_call",
        "id": f"fc_hal{suffix}",
        "call_id": f"call_hal{suffix}",
        "name": call.name,
        "arguments": call.arguments_json(),
        "status": "completed",
    }


def _response(
    body: dict[str, Any], index: int, model: str, output: list[dict[str, Any]], status: str
) -> dict[str, Any]:
    input_tokens = estimate_tokens(body.get("input", []))
    return {
        "id": f"resp_hal{index:03d}",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": model,
        "output": output,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": OUTPUT_TOKENS,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + OUTPUT_TOKENS,
        },
    }


def _stream(
    body: dict[str, Any],
    index: int,
    model: str,
    items: list[dict[str, Any]],
    completed: dict[str, Any],
) -> list[SseEvent]:
    seq = 0

    def event(kind: str, **fields: Any) -> SseEvent:
        nonlocal seq
        seq += 1
        return SseEvent({"type": kind, "sequence_number": seq, **fields}, kind)

    created = _response(body, index, model, [], status="in_progress")
    created["usage"] = None
    events = [event("response.created", response=created)]
    for position, item in enumerate(items):
        events.extend(_item_events(event, position, item))
    events.append(event("response.completed", response=completed))
    return events


def _item_events(
    event: Callable[..., SseEvent], position: int, item: dict[str, Any]
) -> list[SseEvent]:
    """output_item.added, the item's deltas, and output_item.done."""
    kind = item["type"]
    item_id = item["id"]
    if kind == "message":
        opening = {**item, "status": "in_progress", "content": []}
    elif kind == "function_call":
        opening = {**item, "status": "in_progress", "arguments": ""}
    else:
        opening = {**item, "status": "in_progress", "input": ""}
    events = [event("response.output_item.added", output_index=position, item=opening)]
    if kind == "message":
        text = item["content"][0]["text"]
        part = {"type": "output_text", "text": "", "annotations": []}
        common = {"item_id": item_id, "output_index": position, "content_index": 0}
        events.append(event("response.content_part.added", **common, part=part))
        events.extend(
            event("response.output_text.delta", **common, delta=piece) for piece in chunks(text)
        )
        events.append(event("response.output_text.done", **common, text=text))
        done_part = {**part, "text": text}
        events.append(event("response.content_part.done", **common, part=done_part))
    elif kind == "function_call":
        common = {"item_id": item_id, "output_index": position}
        events.extend(
            event("response.function_call_arguments.delta", **common, delta=piece)
            for piece in chunks(item["arguments"], 24)
        )
        events.append(
            event("response.function_call_arguments.done", **common, arguments=item["arguments"])
        )
    else:
        common = {"item_id": item_id, "output_index": position}
        events.extend(
            event("response.custom_tool_call_input.delta", **common, delta=piece)
            for piece in chunks(item["input"], 24)
        )
        events.append(event("response.custom_tool_call_input.done", **common, input=item["input"]))
    events.append(event("response.output_item.done", output_index=position, item=item))
    return events
