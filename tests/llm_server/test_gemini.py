"""The Gemini generateContent API over real HTTP: routing by model method, JSON and SSE
shapes, function calls, usage, turn counting over `model` contents, and countTokens."""

from __future__ import annotations

from typing import Any

from .client import call
from .script import Script, ToolCall, Turn
from .server import ScriptedLLMServer

READ = ToolCall("read_file", {"file_path": "/repo/calc.py"})
SHELL = ToolCall("run_shell_command", {"command": "python3 -m unittest -q test_calc"})
MODEL = "gemini-test"


def gemini_body(model_turns: int, *, tools: bool = True) -> dict[str, Any]:
    """A request that already carries `model_turns` function-call exchanges."""
    contents: list[dict[str, Any]] = [{"role": "user", "parts": [{"text": "fix it"}]}]
    for i in range(model_turns):
        call_part = {"functionCall": {"name": "read_file", "args": {"file_path": f"/f{i}"}}}
        reply = {"functionResponse": {"name": "read_file", "response": {"output": "ok"}}}
        contents += [{"role": "model", "parts": [call_part]}, {"role": "user", "parts": [reply]}]
    body: dict[str, Any] = {"contents": contents, "generationConfig": {"temperature": 0}}
    if tools:
        declarations = [{"name": n, "parametersJsonSchema": {}} for n in ("read_file", "replace")]
        declarations.append({"name": "run_shell_command", "parametersJsonSchema": {}})
        body["tools"] = [{"functionDeclarations": declarations}]
    return body


def url(server: ScriptedLLMServer, method: str) -> str:
    return f"{server.base_url}/v1beta/models/{MODEL}:{method}"


def test_generate_content_json_reply(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.calls(READ, SHELL, text="Reading.")], model=MODEL)
    reply = call(url(llm_server, "generateContent"), gemini_body(0))
    assert reply.status == 200
    [candidate] = reply.json()["candidates"]
    assert candidate["finishReason"] == "STOP"
    assert candidate["content"] == {
        "role": "model",
        "parts": [
            {"text": "Reading."},
            {"functionCall": {"name": "read_file", "args": READ.input}},
            {"functionCall": {"name": "run_shell_command", "args": SHELL.input}},
        ],
    }
    usage = reply.json()["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    [request] = llm_server.requests.all()
    assert (request.api, request.turn_index, request.query) == ("gemini", 0, "")


def test_stream_reassembles_text_and_ends_with_finish_and_usage(
    llm_server: ScriptedLLMServer,
) -> None:
    text = "The bug is in add(); it subtracts."
    llm_server.script = Script(turns=[Turn.say("x"), Turn.say(text)], model=MODEL)
    reply = call(url(llm_server, "streamGenerateContent") + "?alt=sse", gemini_body(1))
    assert reply.headers["content-type"] == "text/event-stream"
    events = [message.data for message in reply.events()]
    assert len(events) > 1 and all(message.event is None for message in reply.events())
    parts = [p for e in events for p in e["candidates"][0]["content"]["parts"]]
    assert "".join(p["text"] for p in parts) == text
    assert [("finishReason" in e["candidates"][0]) for e in events] == [False] * (
        len(events) - 1
    ) + [True]
    assert "usageMetadata" in events[-1] and "usageMetadata" not in events[0]
    assert llm_server.requests.all()[0].query == "alt=sse"


def test_stream_sends_each_function_call_whole(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.calls(READ, SHELL)], model=MODEL)
    reply = call(url(llm_server, "streamGenerateContent") + "?alt=sse", gemini_body(0))
    calls = [
        part["functionCall"]
        for message in reply.events()
        for part in message.data["candidates"][0]["content"]["parts"]
    ]
    assert calls == [
        {"name": "read_file", "args": READ.input},
        {"name": "run_shell_command", "args": SHELL.input},
    ]


def test_turn_follows_model_contents(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.say("zero"), Turn.say("one"), Turn.say("two")])
    for turns in (2, 0, 1):
        call(url(llm_server, "generateContent"), gemini_body(turns))
    assert [r.turn_index for r in llm_server.requests.all()] == [2, 0, 1]


def test_request_without_tools_gets_the_side_reply(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.calls(READ)], side_reply=Turn.say("side"))
    reply = call(url(llm_server, "generateContent"), gemini_body(0, tools=False))
    parts = reply.json()["candidates"][0]["content"]["parts"]
    assert parts == [{"text": "side"}] and llm_server.requests.all()[0].side


def test_count_tokens_and_unknown_methods(llm_server: ScriptedLLMServer) -> None:
    counted = call(url(llm_server, "countTokens"), gemini_body(1))
    assert counted.status == 200 and counted.json()["totalTokens"] > 0
    assert call(url(llm_server, "embedContent"), gemini_body(0)).status == 404
    assert call(f"{llm_server.base_url}/v1beta/models/nomethod", gemini_body(0)).status == 404
    assert [r.status for r in llm_server.requests.all()] == [200, 404, 404]
    assert not llm_server.requests.model_calls()
