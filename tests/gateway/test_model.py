"""The model a hostile agent's request names, read as surely as the upstream would read it:
under an allow-list (or a cost budget) a request whose model could read otherwise upstream is
refused, never forwarded."""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import call, client, grant_for

from hal9999.gateway.proxy import Gateway

ALLOWED, OTHER = "claude-haiku-4-5", "claude-opus-4-1"
JSON = "application/json"


def body(model: str = OTHER) -> bytes:
    return json.dumps({"model": model, "max_tokens": 10, "messages": []}).encode()


async def raw(sock: str, token: str, data: bytes, *, path: str = "/v1/messages",
              headers: tuple[tuple[str, str], ...] = (), method: str = "POST",
              ) -> tuple[int, dict[str, object]]:  # fmt: skip
    """One request as written (no client tidies its path or headers): status and JSON body."""
    reader, writer = await asyncio.open_unix_connection(sock)
    lines = [f"{method} {path} HTTP/1.1", "host: gw", f"x-api-key: {token}",
             f"content-length: {len(data)}", "connection: close",
             *(f"{name}: {value}" for name, value in headers)]  # fmt: skip
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    answer = await reader.read()
    writer.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(rest)


HOSTILE = {
    "form-encoded": (f"model={OTHER}&max_tokens=10".encode(), 415,
                     (("content-type", "application/x-www-form-urlencoded"),), "declared"),
    "form, no content-type": (f"model={OTHER}".encode(), 400, (), "not a JSON object"),
    "msgpack": (b"\x82\xa5model\xafclaude-opus-4-1\xaamax_tokens\x0a", 415,
                (("content-type", "application/msgpack"),), "declared"),
    "msgpack, said to be JSON": (b"\x81\xa5model\xafclaude-opus-4-1", 400,
                                 (("content-type", JSON),), "not a JSON object"),
    "garbage": (b"\x00\xff garbage {", 400, (), "not a JSON object"),
    "a JSON array": (b"[" + body() + b"]", 400, (), "not a JSON object"),
    "empty": (b"", 400, (("content-type", JSON),), "not a JSON object (it is empty)"),
    "two JSON objects": (body(ALLOWED) + body(), 400, (), "not a JSON object (extra data"),
    "gzip": (gzip.compress(body()), 415, (("content-encoding", "gzip"),), "encoded"),
    "gzip, said to be JSON": (gzip.compress(body()), 415,
                              (("content-type", JSON), ("content-encoding", "gzip")), "encoded"),
    "UTF-16, declared": (body().decode().encode("utf-16"), 415,
                         (("content-type", f"{JSON}; charset=utf-16"),), "declared"),
    "UTF-7, declared": (body(ALLOWED), 415, (("content-type", f"{JSON}; charset=utf-7"),),
                        "declared"),
    "two content-types": (body(ALLOWED), 415,
                          (("content-type", JSON), ("content-type", "text/plain")),
                          "more than one content-type"),
    # Which "model" wins is the parser's choice (first, last, or an error): none passes.
    "model twice, allowed last": (
        f'{{"model": "{OTHER}", "model": "{ALLOWED}"}}'.encode(), 400, (), "more than once"),
    "model twice, once escaped": (
        f'{{"mod\\u0065l": "{OTHER}", "model": "{ALLOWED}"}}'.encode(), 400, (), "more than once"),
    "model twice, once upper-case": (  # Go's encoding/json matches keys case-insensitively
        f'{{"MODEL": "{OTHER}", "model": "{ALLOWED}"}}'.encode(), 400, (), "more than once"),
    "a model that is not a string": (f'{{"model": ["{OTHER}"]}}'.encode(), 400, (), "not a string"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_body_whose_model_could_read_otherwise_is_refused_under_an_allow_list(
    gateway: tuple[Gateway, str], upstream: StormUpstream, case: str
) -> None:
    # A body that was not a JSON object had no model to the gateway, which let it through
    # the allow-list: the upstream, decoding it another way, read whatever model it named.
    gw, sock = gateway
    data, status, headers, words = HOSTILE[case]
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, answer = await raw(sock, grant.token, data, headers=headers)
    assert got == status, answer
    error = answer["error"]
    assert isinstance(error, dict) and words in error["message"]
    assert upstream.seen == []


@pytest.mark.parametrize(
    "path",
    [f"/v1beta/models/{ALLOWED}:generateContent/../../models/{OTHER}:generateContent",
     f"/v1beta/models/{ALLOWED}:generateContent/%2e%2e/%2e%2e/models/{OTHER}:generateContent",
     f"/v1beta/models/{ALLOWED}:generateContent\\..\\..\\models\\{OTHER}:generateContent"],
    ids=["dot segments", "escaped dot segments", "backslashes"],
)  # fmt: skip
async def test_a_path_an_upstream_could_normalise_to_another_model_is_refused(
    gateway: tuple[Gateway, str], upstream: StormUpstream, path: str
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, answer = await raw(sock, grant.token, b'{"contents": []}', path=path)
    assert got == 400 and "dot segment" in str(answer)
    assert upstream.seen == []


async def test_a_model_in_the_path_and_another_in_the_body_are_both_checked(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, answer = await raw(sock, grant.token, body(OTHER),
                            path=f"/v1beta/models/{ALLOWED}:generateContent")  # fmt: skip
    assert got == 403 and OTHER in str(answer)
    assert upstream.seen == []


async def test_utf16_json_is_read_as_json_readers_detect_it(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, answer = await raw(sock, grant.token, body(OTHER).decode().encode("utf-16"))
    assert got == 403 and OTHER in str(answer)
    assert upstream.seen == []


async def test_a_cost_budget_reads_the_model_as_strictly(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # An unpriced model's calls cost null, which no budget counts: gzip hid the model.
    gw, sock = gateway
    grant = grant_for(upstream, max_cost_usd=1.0)
    gw.register(grant)
    data = gzip.compress(body("claude-private-9"))
    got, _ = await raw(sock, grant.token, data, headers=(("content-encoding", "gzip"),))
    assert got == 415
    assert upstream.seen == []


async def test_well_formed_calls_still_pass_and_refusals_are_recorded(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    headers = (("content-type", f"{JSON}; charset=UTF-8"),)
    got, _ = await raw(sock, grant.token, b" \r\n" + body(ALLOWED) + b"\n", headers=headers)
    assert got == 200
    async with client(sock) as http:
        assert (await call(http, grant.token, model=ALLOWED)).status_code == 200
        listed = await http.get("/v1/models", headers={"x-api-key": grant.token})
    assert listed.status_code != 400, "a GET with no body has no model to read"
    got, _ = await raw(sock, grant.token, b"[]")
    assert got == 400
    await gw.drain()
    rows = gw.store.gateway_requests("t1")
    assert [(r.status, r.error) for r in rows][-1] == (400, "bad_request")
    assert [s.body["model"] for s in upstream.seen] == [ALLOWED, ALLOWED]


BATCH = json.dumps({"requests": [{"custom_id": "a", "params": json.loads(body())}]}).encode()


@pytest.mark.parametrize(
    "fields", [{"models": [ALLOWED]}, {"max_cost_usd": 1.0}, {"max_tokens": 1000}],
    ids=["allow-list", "cost budget", "token budget"],
)  # fmt: skip
@pytest.mark.parametrize(
    "path", ["/v1/messages/batches", "/v1/batches", "/v1/messages/batches/",
             f"/v1beta/models/{ALLOWED}:batchGenerateContent",
             f"/v1beta/models/{ALLOWED}:asyncBatchEmbedContent"],
)  # fmt: skip
async def test_a_batch_is_refused_where_spend_is_metered_or_models_are_listed(
    gateway: tuple[Gateway, str], upstream: StormUpstream, fields: dict[str, object], path: str
) -> None:
    # A batch's model sits under requests[].params (the allow-list never saw it) and its
    # cost is billed when it completes, in no answer the gateway reads: both went through.
    gw, sock = gateway
    grant = grant_for(upstream, **fields)
    gw.register(grant)
    got, answer = await raw(sock, grant.token, BATCH, path=path)
    assert got == 403, answer
    error = answer["error"]
    assert isinstance(error, dict) and "batch calls are billed" in str(error["message"])
    assert upstream.seen == []
    await gw.drain()
    assert [r.error for r in gw.store.gateway_requests("t1")] == ["not_metered"]


async def test_a_call_that_names_no_model_is_refused_under_an_allow_list(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # OpenAI's thread runs take their assistant's model: the body names none to check.
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, answer = await raw(sock, grant.token, b'{"assistant_id": "asst_1"}',
                            path="/v1/threads/runs")  # fmt: skip
    assert got == 400 and "names no model" in str(answer)
    assert upstream.seen == []


async def test_a_batch_without_a_budget_or_allow_list_still_passes(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream)
    gw.register(grant)
    got, _ = await raw(sock, grant.token, BATCH, path="/v1/messages/batches")
    assert got != 403
    assert len(upstream.seen) == 1


AZURE = "/openai/deployments/{}/chat/completions?api-version=2024-10-21"
AZURE_BODY = json.dumps({"max_tokens": 10, "messages": []}).encode()


@pytest.mark.parametrize(
    ("path", "data"),
    [(AZURE.format(OTHER), body(ALLOWED)), (AZURE.format(OTHER), AZURE_BODY),
     (f"/openai/Deployments/{OTHER}/chat/completions", body(ALLOWED)),
     (f"/openai//deployments//{OTHER}/embeddings", body(ALLOWED)),
     (f"/model/{OTHER}/invoke", body(ALLOWED))],
    ids=["body names an allowed model", "no model in the body", "upper-case",
         "empty segments", "Bedrock"],
)  # fmt: skip
async def test_a_model_or_azure_deployment_in_the_path_is_checked_against_the_allow_list(
    gateway: tuple[Gateway, str], upstream: StormUpstream, path: str, data: bytes
) -> None:
    # Azure serves the deployment its path names (Bedrock the model) and ignores the body's
    # model: an allowed model in the body let any deployment through the allow-list.
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, answer = await raw(sock, grant.token, data, path=path)
    assert got == 403, answer
    error = answer["error"]
    assert isinstance(error, dict) and error["code"] == "model_not_allowed"
    named = "model" if path.startswith("/model/") else "the Azure deployment"
    assert f"{named} {OTHER!r} is not allowed" in str(error["message"])
    assert upstream.seen == []


@pytest.mark.parametrize(
    "path",
    [f"/openai/deployments/{ALLOWED}/../{OTHER}/chat/completions",
     f"/openai/deployments/{ALLOWED}/%2e%2e/{OTHER}/chat/completions",
     f"/openai/%64eployments/{OTHER}/chat/completions",
     f"/openai/deployments;v=1/{OTHER}/chat/completions",
     f"/openai/deployments/{ALLOWED}/./chat/completions"],
    ids=["dot segments", "escaped dot segments", "escaped name", "path parameter",
         "dot segment"],
)  # fmt: skip
async def test_an_azure_path_that_could_read_as_another_deployment_is_refused(
    gateway: tuple[Gateway, str], upstream: StormUpstream, path: str
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, answer = await raw(sock, grant.token, body(ALLOWED), path=path)
    assert got == 400 and "which an upstream may read as another model" in str(answer)
    assert upstream.seen == []


async def test_an_allowed_azure_deployment_is_served(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, _ = await raw(sock, grant.token, AZURE_BODY, path=AZURE.format(ALLOWED))
    assert got == 200
    assert [s.path for s in upstream.seen] == [AZURE.format(ALLOWED)]


@pytest.mark.parametrize(
    "fields", [{"models": [ALLOWED]}, {"max_cost_usd": 1.0}, {"max_tokens": 1000}],
    ids=["allow-list", "cost budget", "token budget"],
)  # fmt: skip
@pytest.mark.parametrize(
    ("path", "data"),
    [("/v1/fine_tuning/jobs", json.dumps({"model": ALLOWED, "training_file": "f"}).encode()),
     ("/openai/Fine_Tuning/jobs", json.dumps({"model": ALLOWED, "training_file": "f"}).encode()),
     ("/v1beta/tunedModels", json.dumps({"model": ALLOWED, "baseModel": ALLOWED}).encode()),
     ("/v1beta/cachedContents", json.dumps({"model": ALLOWED, "ttl": "86400s"}).encode()),
     (f"/v1beta/models/{ALLOWED}:predictLongRunning", json.dumps({"model": ALLOWED}).encode()),
     ("/v1/responses", json.dumps({"model": ALLOWED, "background": True}).encode())],
    ids=["fine-tuning", "azure-fine-tuning", "gemini-tuning", "gemini-cache",
         "long-running", "background"],
)  # fmt: skip
async def test_work_billed_after_the_call_is_refused_where_spend_is_metered(
    gateway: tuple[Gateway, str], upstream: StormUpstream, fields: dict[str, object],
    path: str, data: bytes,
) -> None:  # fmt: skip
    # A fine-tuning job, a cache stored by the hour, a background response: each answer
    # comes back at once with no usage in it, and the bill later. Under a budget they went
    # through unmetered, as many as the agent liked (under an allow-list, of an allowed model).
    gw, sock = gateway
    grant = grant_for(upstream, **fields)
    gw.register(grant)
    got, answer = await raw(sock, grant.token, data, path=path)
    assert got == 403, answer
    error = answer["error"]
    assert isinstance(error, dict) and "billed after the call ends" in str(error["message"])
    assert upstream.seen == []


async def test_a_gemini_tuned_models_path_is_checked_against_the_allow_list(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # Gemini serves the tuned model its path names; the gateway read only /models/ paths,
    # so a body naming an allowed model let any tuned model through.
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, answer = await raw(sock, grant.token, body(ALLOWED),
                            path=f"/v1beta/tunedModels/{OTHER}:generateContent")  # fmt: skip
    assert got == 403, answer
    assert f"{OTHER!r} is not allowed" in str(answer)
    assert upstream.seen == []


@pytest.mark.parametrize(
    "path",
    [f"/v1beta/Models/{OTHER}:generateContent", f"/v1beta/models//{OTHER}:generateContent",
     f"/v1beta//TUNEDMODELS/{OTHER}:streamGenerateContent", "/v1beta/models/:generateContent"],
    ids=["upper-case", "empty segment", "tuned, upper-case", "no name"],
)  # fmt: skip
async def test_a_gemini_path_read_as_a_lenient_router_would_is_checked(
    gateway: tuple[Gateway, str], upstream: StormUpstream, path: str
) -> None:
    # Only an exact "/models/NAME:" was read: a path a router matching it ignoring case, or
    # collapsing empty segments, serves as another model passed with an allowed body model.
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, answer = await raw(sock, grant.token, body(ALLOWED), path=path)
    assert got == 403, answer
    assert "is not allowed" in str(answer)
    assert upstream.seen == []


async def test_a_refused_model_holding_a_lone_surrogate_is_recorded(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # json.loads decodes "\ud800" to a lone surrogate, which SQLite cannot encode: the
    # refusal's row raised in the ledger's flush, lost with every row of its batch (and the
    # futures of the calls committed with it never resolved: their answers never ended).
    gw, sock = gateway
    grant = grant_for(upstream, models=[ALLOWED])
    gw.register(grant)
    got, _ = await raw(sock, grant.token, b'{"model": "\\ud800x", "max_tokens": 1}')
    assert got == 403
    await gw.drain()
    rows = gw.store.gateway_requests("t1")
    assert [(r.status, r.error, r.model) for r in rows] == [(403, "model_not_allowed", "?x")]
