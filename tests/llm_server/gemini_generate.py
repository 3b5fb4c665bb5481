"""Google Gemini API (`POST /v1beta/models/MODEL:generateContent` and
`:streamGenerateContent?alt=sse`): a GenerateContentResponse, or a stream of them.

Requests carry `contents` (`role` `user` or `model`, each a list of `parts`: `text`,
`functionCall {name, args}`, `functionResponse`) and `tools[].functionDeclarations[]`. A
model turn is one `model` content. The stream sends text in several chunks, then each
function call whole (Gemini never splits call arguments), then a last chunk with
`finishReason` and `usageMetadata`. Without `alt=sse` the SDK expects a JSON array; the Gemini
CLI always asks for SSE.
"""

from __future__ import annotations

from typing import Any

from .script import Turn, chunks, count_assistant_messages, estimate_tokens
from .wire import Reply, SseEvent

OUTPUT_TOKENS = 12
"""Fixed candidate token count reported for every scripted turn."""


def as_messages(contents: list[Any]) -> list[dict[str, Any]]:
    """`contents` in the role-tagged shape the shared turn counter reads."""
    return [
        {
            "role": "assistant" if c.get("role") == "model" else c.get("role", "user"),
            "content": c.get("parts") or [],
        }
        for c in contents
        if isinstance(c, dict)
    ]


class GeminiGenerate:
    """The Gemini generateContent wire format; `stream` selects streamGenerateContent."""

    name = "gemini"

    def __init__(self, *, stream: bool) -> None:
        self.stream = stream

    def count_turns(self, body: dict[str, Any], anchor: str | None) -> int | None:
        """`model` contents in `contents`."""
        return count_assistant_messages(as_messages(body.get("contents") or []), anchor)

    def offered_tools(self, body: dict[str, Any]) -> set[str] | None:
        """Function declaration names (empty for a tool-less request)."""
        return {
            declaration["name"]
            for tool in body.get("tools") or []
            for declaration in tool.get("functionDeclarations") or []
            if "name" in declaration
        }

    def render(self, body: dict[str, Any], turn: Turn, index: int, model: str) -> Reply:
        """One response, or SSE chunks of it when streaming."""
        usage = _usage(body)
        calls = [
            {"functionCall": {"name": c.name, "args": c.input_dict()}} for c in turn.tool_calls
        ]
        if not self.stream:
            parts = ([{"text": turn.text}] if turn.text else []) + calls
            return Reply(body=_response(parts, model, index, finish=True, usage=usage))
        pieces = [[{"text": piece}] for piece in chunks(turn.text)] + [[call] for call in calls]
        if not pieces:
            pieces = [[{"text": ""}]]
        events = [
            SseEvent(_response(parts, model, index, finish=i == len(pieces) - 1, usage=usage))
            for i, parts in enumerate(pieces)
        ]
        return Reply(events=events)


def _usage(body: dict[str, Any]) -> dict[str, int]:
    prompt = estimate_tokens(body.get("contents", []))
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": OUTPUT_TOKENS,
        "totalTokenCount": prompt + OUTPUT_TOKENS,
    }


def _response(
    parts: list[dict[str, Any]], model: str, index: int, *, finish: bool, usage: dict[str, int]
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    response: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": model,
        "responseId": f"resp_hal{index:03d}",
    }
    if finish:
        candidate["finishReason"] = "STOP"
        response["usageMetadata"] = usage
    return response


def count_tokens_reply(body: dict[str, Any]) -> Reply:
    """`:countTokens`: an estimate of the request's contents."""
    return Reply(body={"totalTokens": estimate_tokens(body.get("contents", []))})
