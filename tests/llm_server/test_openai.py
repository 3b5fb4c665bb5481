"""OpenAI Chat Completions and Responses over real HTTP: JSON and SSE shapes, reassembly of
streamed tool calls, usage, and the Responses turn counting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .client import SseMessage, call
from .openai_responses import OpenAIResponses
from .script import Script, ToolCall, Turn
from .server import ScriptedLLMServer

READ = ToolCall("read", {"filePath": "/repo/calc.py"})
BASH = ToolCall("bash", {"command": "python3 -m unittest -q test_calc"})
PATCH = ToolCall(
    "apply_patch", "*** Begin Patch\n*** Update File: calc.py\n*** End Patch\n", "custom"
)


def chat_body(assistant_turns: int, **extra: Any) -> dict[str, Any]:
    """A Chat Completions request that already carries `assistant_turns` exchanges."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "fix it"},
    ]
    for i in range(assistant_turns):
        call_id = f"c{i}"
        function = {"name": "read", "arguments": "{}"}
        tool_call = {"id": call_id, "type": "function", "function": function}
        messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})
        messages.append({"role": "tool", "tool_call_id": call_id, "content": "ok"})
    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in ("read", "bash")
    ]
    return {"model": "m", "messages": messages, "tools": tools} | extra


def responses_body(input_items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A Responses request offering an exec function tool and the apply_patch custom tool."""
    tools = [
        {"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("read", "bash")
    ]
    tools += [{"type": "custom", "name": "apply_patch"}, {"type": "web_search"}]
    return {"model": "gpt-test", "input": input_items, "tools": tools} | extra


USER = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix"}]}


def fc(call_id: str, kind: str = "function_call") -> dict[str, Any]:
    return {"type": kind, "call_id": call_id, "name": "x"}


def out(call_id: str, kind: str = "function_call_output") -> dict[str, Any]:
    return {"type": kind, "call_id": call_id, "output": "ok"}


def test_chat_json_tool_calls_then_text(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.calls(READ, BASH), Turn.say("done")])
    url = llm_server.openai_base_url + "/chat/completions"
    first = call(url, chat_body(0)).json()
    assert first["object"] == "chat.completion"
    (choice,) = first["choices"]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["read", "bash"]
    assert json.loads(calls[0]["function"]["arguments"]) == READ.input
    assert len({c["id"] for c in calls}) == 2
    second = call(url, chat_body(1)).json()
    assert second["choices"][0]["message"] == {"role": "assistant", "content": "done"}
    assert second["choices"][0]["finish_reason"] == "stop"
    usage = second["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def reassemble_chat(events: list[SseMessage]) -> tuple[str, dict[int, dict[str, str]], Any]:
    """Text, tool calls by index, and the usage chunk's usage from a chat stream."""
    text, calls, usage = "", dict[int, dict[str, str]](), None
    for event in events[:-1]:
        if event.data.get("usage"):
            usage = event.data["usage"]
        for choice in event.data["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for piece in delta.get("tool_calls", []):
                entry = calls.setdefault(piece["index"], {"name": "", "arguments": ""})
                entry["id"] = piece.get("id", entry.get("id", ""))
                entry["name"] += piece.get("function", {}).get("name", "")
                entry["arguments"] += piece.get("function", {}).get("arguments", "")
    return text, calls, usage


def test_chat_stream_with_usage(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.calls(READ, BASH, text="Checking the file now.")])
    body = chat_body(0, stream=True, stream_options={"include_usage": True})
    reply = call(llm_server.openai_base_url + "/chat/completions", body)
    events = reply.events()
    assert events[-1].data == "[DONE]"
    assert all(e.event is None for e in events)
    assert events[0].data["choices"][0]["delta"]["role"] == "assistant"
    text, calls, usage = reassemble_chat(events)
    assert text == "Checking the file now."
    assert [calls[i]["name"] for i in (0, 1)] == ["read", "bash"]
    assert json.loads(calls[1]["arguments"]) == BASH.input
    assert all(c["id"].startswith("call_") for c in calls.values())
    finish = [e for e in events[:-1] if e.data["choices"] and e.data["choices"][0]["finish_reason"]]
    assert finish[-1].data["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-2].data["choices"] == [] and usage["completion_tokens"] > 0


def test_chat_stream_without_usage_option_sends_no_usage(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.say("hello")])
    events = call(
        llm_server.openai_base_url + "/chat/completions", chat_body(0, stream=True)
    ).events()
    text, calls, usage = reassemble_chat(events)
    assert (text, calls, usage) == ("hello", {}, None)


def test_chat_title_request_without_tools_is_side(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.calls(READ)], side_reply=Turn.say("Fix calc"))
    body = chat_body(0)
    del body["tools"]
    reply = call(llm_server.openai_base_url + "/chat/completions", body).json()
    assert reply["choices"][0]["message"]["content"] == "Fix calc"
    assert llm_server.requests.all()[0].side


@pytest.mark.parametrize(
    ("items", "turns"),
    [
        ([USER], 0),
        ([USER, fc("a"), out("a")], 1),
        (
            [
                USER,
                fc("a"),
                out("a"),
                fc("b", "custom_tool_call"),
                out("b", "custom_tool_call_output"),
            ],
            2,
        ),
        ([USER, fc("a"), fc("b"), out("a"), out("b")], 1),  # parallel calls are one turn
        ([USER, fc("a"), fc("b"), out("b"), out("a"), fc("c"), out("c")], 2),
        ([USER, {"type": "message", "role": "assistant", "content": []}, USER], 1),
        ([USER, {"type": "reasoning"}, fc("a"), out("a"), {"type": "reasoning"}, fc("b")], 2),
    ],
)
def test_responses_turn_counting(items: list[dict[str, Any]], turns: int) -> None:
    assert OpenAIResponses().count_turns({"input": items}, None) == turns


def test_responses_turn_counting_with_anchor() -> None:
    canned = [USER, fc("a"), out("a")]
    prompt = {"role": "user", "content": [{"type": "input_text", "text": "Fix calc.py now"}]}
    body = {"input": [*canned, prompt, fc("b"), out("b")]}
    assert OpenAIResponses().count_turns(body, "Fix calc.py") == 1
    assert OpenAIResponses().count_turns({"input": canned}, "Fix calc.py") is None
    assert OpenAIResponses().count_turns({"input": "Fix calc.py"}, "Fix calc.py") == 0


def test_responses_json_items(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.calls(READ, PATCH, text="Patching.")])
    reply = call(llm_server.openai_base_url + "/responses", responses_body([USER])).json()
    assert reply["object"] == "response" and reply["status"] == "completed"
    message, function_call, custom = reply["output"]
    assert message["content"][0] == {"type": "output_text", "text": "Patching.", "annotations": []}
    assert function_call["type"] == "function_call" and function_call["name"] == "read"
    assert json.loads(function_call["arguments"]) == READ.input
    assert custom["type"] == "custom_tool_call" and custom["input"] == PATCH.input
    assert function_call["call_id"] != custom["call_id"]
    assert reply["usage"]["total_tokens"] > reply["usage"]["input_tokens"]


def test_responses_stream_events(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.calls(READ, PATCH, text="Patching the file now.")])
    body = responses_body([USER], stream=True)
    events = call(llm_server.openai_base_url + "/responses", body).events()
    kinds = [e.event for e in events]
    assert all(e.event == e.data["type"] for e in events)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert (
        kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 3
    )
    sequence = [e.data["sequence_number"] for e in events]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence)

    text = "".join(e.data["delta"] for e in events if e.event == "response.output_text.delta")
    arguments = "".join(
        e.data["delta"] for e in events if e.event == "response.function_call_arguments.delta"
    )
    patch = "".join(
        e.data["delta"] for e in events if e.event == "response.custom_tool_call_input.delta"
    )
    assert text == "Patching the file now."
    assert json.loads(arguments) == READ.input
    assert patch == PATCH.input
    done = [e.data["item"] for e in events if e.event == "response.output_item.done"]
    assert [item["type"] for item in done] == ["message", "function_call", "custom_tool_call"]
    completed = events[-1].data["response"]
    assert completed["output"] == done
    assert completed["usage"]["output_tokens"] > 0
    assert events[0].data["response"]["status"] == "in_progress"


def test_responses_stateless_replay(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.calls(READ), Turn.calls(PATCH), Turn.say("done")])
    url = llm_server.openai_base_url + "/responses"
    history = [USER, fc("x"), out("x")]
    for _ in range(2):  # a retry of the same request gets the same turn
        (item,) = call(url, responses_body(history)).json()["output"]
        assert item["type"] == "custom_tool_call"
    history += [fc("y", "custom_tool_call"), out("y", "custom_tool_call_output")]
    (item,) = call(url, responses_body(history)).json()["output"]
    assert item["content"][0]["text"] == "done"
    assert [r.turn_index for r in llm_server.requests.all()] == [1, 1, 2]
