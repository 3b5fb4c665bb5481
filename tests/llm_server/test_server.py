"""The scripted server over real HTTP: routing, the request log, stateless turn selection,
side requests, the call limit, and the Anthropic Messages format (JSON and SSE)."""

from __future__ import annotations

import gzip
import http.client
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from .client import call
from .script import Script, ToolCall, Turn
from .server import ScriptedLLMServer

READ = Turn.call("Read", file_path="/repo/calc.py")
TOOLS = [{"name": n, "input_schema": {"type": "object"}} for n in ("Read", "Edit")]


def messages_body(assistant_turns: int, **extra: Any) -> dict[str, Any]:
    """An Anthropic request that already carries `assistant_turns` exchanges."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "fix it"}]
    for i in range(assistant_turns):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": f"t{i}"}]})
        messages.append({"role": "user", "content": [{"type": "text", "text": "ok"}]})
    return {"model": "claude-test", "max_tokens": 100, "messages": messages, "tools": TOOLS} | extra


def test_head_and_get_root_answer_200(llm_server: ScriptedLLMServer) -> None:
    assert call(llm_server.base_url + "/", method="HEAD").status == 200
    assert call(llm_server.base_url + "/").json() == {"status": "ok"}
    assert llm_server.requests.paths() == ["HEAD /", "GET /"]


def test_models_lists_the_script_model_in_both_shapes(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[], model="m-1")
    for url in (llm_server.openai_base_url + "/models", llm_server.base_url + "/models"):
        body = call(url).json()
        assert body["object"] == "list"
        assert body["data"][0]["id"] == "m-1"
        assert body["data"][0]["type"] == "model"


def test_unknown_path_is_404_and_recorded(llm_server: ScriptedLLMServer) -> None:
    reply = call(llm_server.base_url + "/v1/nope", {"x": 1})
    assert reply.status == 404
    assert reply.json()["error"]["type"] == "not_found_error"
    (recorded,) = llm_server.requests.all()
    assert (recorded.path, recorded.status, recorded.body) == ("/v1/nope", 404, {"x": 1})


def test_non_json_body_is_400(llm_server: ScriptedLLMServer) -> None:
    request = urllib.request.Request(llm_server.base_url + "/v1/messages", data=b"{oops")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    caught.value.close()
    assert caught.value.code == 400
    assert llm_server.requests.all()[0].status == 400


def test_chunked_and_gzipped_bodies_are_decoded(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.say("hi")])
    payload = json.dumps(messages_body(0)).encode()
    connection = http.client.HTTPConnection("127.0.0.1", llm_server.port, timeout=5)
    try:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        body = iter([gzip.compress(payload)])
        connection.request("POST", "/v1/messages", body, headers, encode_chunked=True)
        reply = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    assert reply["content"][0]["text"] == "hi"
    (recorded,) = llm_server.requests.all()
    assert recorded.headers["transfer-encoding"] == "chunked"
    assert recorded.body == json.loads(payload)


def test_log_keeps_method_path_query_headers_and_body(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.say("hi")])
    body = messages_body(0)
    call(llm_server.base_url + "/v1/messages?beta=true", body, headers={"x-api-key": "sk-dummy"})
    (recorded,) = llm_server.requests.all()
    assert (recorded.method, recorded.path, recorded.query) == ("POST", "/v1/messages", "beta=true")
    assert recorded.headers["x-api-key"] == "sk-dummy"
    assert recorded.body == body
    assert (recorded.api, recorded.turn_index, recorded.side) == ("anthropic", 0, False)


def test_turn_follows_assistant_count_not_request_order(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[READ, Turn.say("second"), Turn.say("third")])
    url = llm_server.base_url + "/v1/messages"
    texts = []
    for count in (2, 0, 1, 1, 2, 9):  # out of order, repeated (a retry), past the end
        content = call(url, messages_body(count)).json()["content"]
        texts.append(content[0].get("text") or content[0]["name"])
    assert texts == ["third", "Read", "second", "second", "third", "Done."]


def test_request_without_the_scripted_tools_gets_side_reply(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[READ], side_reply=Turn.say("a title"))
    body = messages_body(0)
    del body["tools"]
    reply = call(llm_server.base_url + "/v1/messages", body).json()
    assert reply["content"] == [{"type": "text", "text": "a title"}]
    assert llm_server.requests.all()[0].side
    assert llm_server.requests.model_calls() == []
    assert len(llm_server.requests.model_calls(include_side=True)) == 1


def test_anchor_counts_only_turns_after_the_prompt(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.say("edit"), Turn.say("reflect")], anchor="Fix it")
    canned = [
        {"role": "user", "content": "example request"},
        {"role": "assistant", "content": "example answer"},
    ]
    url = llm_server.base_url + "/v1/messages"
    prompt = {"role": "user", "content": "Fix it please"}
    first = call(url, {"messages": [*canned, prompt]}).json()
    second = call(
        url,
        {"messages": [*canned, prompt, {"role": "assistant", "content": "edit"}, prompt]},
    ).json()
    quoted = call(url, {"messages": [{"role": "user", "content": "USER: Fix it"}]}).json()
    assert [first["content"][0]["text"], second["content"][0]["text"]] == ["edit", "reflect"]
    assert quoted["content"][0]["text"] == "ok"
    assert [r.turn_index for r in llm_server.requests.all()] == [0, 1, None]


def test_calls_past_the_limit_get_400(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[], max_model_calls=2)
    url = llm_server.base_url + "/v1/messages"
    statuses = [call(url, messages_body(0)).status for _ in range(3)]
    assert statuses == [200, 200, 400]
    assert len(llm_server.requests.model_calls()) == 2


def test_anthropic_json_reply_shape(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.calls(READ.tool_calls[0], text="Reading.")])
    reply = call(llm_server.base_url + "/v1/messages", messages_body(0)).json()
    assert reply["type"] == "message" and reply["role"] == "assistant"
    assert reply["model"] == "claude-test"
    assert reply["stop_reason"] == "tool_use"
    text, tool = reply["content"]
    assert text == {"type": "text", "text": "Reading."}
    assert tool["type"] == "tool_use" and tool["name"] == "Read"
    assert tool["input"] == {"file_path": "/repo/calc.py"}
    assert tool["id"].startswith("toolu_")
    assert reply["usage"]["output_tokens"] > 0


def test_anthropic_stream_event_order_and_reassembly(llm_server: ScriptedLLMServer) -> None:
    long_text = "Let me look at the file first, then fix it."
    edit = ToolCall("Edit", {"file_path": "/r/c.py", "old_string": "a - b", "new_string": "a + b"})
    llm_server.script = Script(turns=[Turn.calls(edit, text=long_text)])
    reply = call(llm_server.base_url + "/v1/messages?beta=true", messages_body(0, stream=True))
    assert reply.headers["content-type"] == "text/event-stream"
    events = reply.events()
    assert all(e.event == e.data["type"] for e in events)
    kinds = [e.event for e in events]
    assert kinds[:2] == ["message_start", "ping"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 2

    blocks: dict[int, dict[str, Any]] = {}
    for event in events:
        data = event.data
        if event.event == "content_block_start":
            blocks[data["index"]] = {**data["content_block"], "partial": ""}
        elif event.event == "content_block_delta":
            delta = data["delta"]
            block = blocks[data["index"]]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta"
                block["partial"] += delta["partial_json"]
    assert blocks[0]["text"] == long_text
    assert json.loads(blocks[1]["partial"]) == edit.input
    assert blocks[1]["name"] == "Edit" and blocks[1]["id"].startswith("toolu_")
    deltas = [e for e in events if e.event == "content_block_delta"]
    assert len(deltas) > 2  # text and JSON really arrive in pieces
    message_delta = events[-2].data
    assert message_delta["delta"]["stop_reason"] == "tool_use"
    assert message_delta["usage"]["output_tokens"] > 0
    assert events[0].data["message"]["usage"]["input_tokens"] > 0


def test_anthropic_stream_text_turn_ends_the_turn(llm_server: ScriptedLLMServer) -> None:
    llm_server.script = Script(turns=[Turn.say("all done")])
    events = call(llm_server.base_url + "/v1/messages", messages_body(0, stream=True)).events()
    assert events[-2].data["delta"]["stop_reason"] == "end_turn"


def test_count_tokens(llm_server: ScriptedLLMServer) -> None:
    reply = call(llm_server.base_url + "/v1/messages/count_tokens", messages_body(0)).json()
    assert reply["input_tokens"] > 0
    assert llm_server.requests.model_calls(include_side=True) == []


def test_server_stops_and_frees_its_port() -> None:
    with ScriptedLLMServer() as server:
        url = server.base_url + "/"
        assert call(url).status == 200
    try:
        call(url, timeout=1)
    except OSError:
        pass
    else:
        raise AssertionError("server still answering after stop()")
