"""The fake DigitalOcean API answers as DigitalOcean's published OpenAPI spec says, and hal's
requests are what that spec accepts.

The schemas are DigitalOcean's (github.com/digitalocean/openapi, Apache-2.0), the droplet
operations resolved into one file: tests/fakes/schemas/digitalocean_droplets.json (see
tests/fakes/schemas/README.md).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from tests.fakes.do_api import TOKEN, FakeDigitalOcean, FakeDroplet
from tests.fakes.vendor_api import Seen

from hal9999.providers.registry import load_provider
from hal9999.spec import SandboxSpec

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_connections_closed")]
SCHEMAS = json.loads(
    (Path(__file__).parents[1] / "fakes" / "schemas" / "digitalocean_droplets.json").read_text()
)


def json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema: ``nullable: true`` becomes a null alternative."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def operation(seen: Seen) -> str:
    if re.fullmatch(r"/v2/droplets/\d+", seen.path):
        return {"GET": "droplets_get", "DELETE": "droplets_destroy"}[seen.method]
    if seen.method == "DELETE":
        return "droplets_destroy_byTag"
    return {"GET": "droplets_list", "POST": "droplets_create"}[seen.method]


def check(seen: Seen) -> None:
    op = SCHEMAS[operation(seen)]
    response = op["responses"].get(str(seen.status)) or op["responses"]["default"]
    for header in response.get("headers", {}):
        assert header in seen.headers, (seen.path, header)
    content = response.get("content")
    if content is None:
        assert seen.answer is None, seen
        return
    schema = json_schema(content["application/json"]["schema"])
    jsonschema.validate(seen.answer, schema)


async def test_answers_and_requests_follow_digitaloceans_openapi(
    fake_do: FakeDigitalOcean, fake_do_settings: dict[str, Any], hal_home: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    provider = load_provider("digitalocean", state_dir=hal_home / "sandboxes" / "digitalocean",
                             settings=fake_do_settings)  # fmt: skip
    spec = SandboxSpec(provider="digitalocean", network="host", workspace=tmp_path)
    fake_do.check = check  # every answer, as the fake gives it
    fake_do.fail(429, method="POST", retry_after=1)
    fake_do.fail(500, method="GET")
    async with await provider.create(spec):
        await provider.list()
    monkeypatch.setenv("HAL_DO_TOKEN", "wrong")
    await provider.list()  # a 401, swallowed by list
    statuses = {seen.status for seen in fake_do.seen}
    assert {200, 202, 204, 401, 429, 500} <= statuses
    assert fake_do.problems == []
    [create] = [s for s in fake_do.seen if s.method == "POST" and s.status == 202]
    body_schema = SCHEMAS["droplets_create"]["requestBody"]["content"]["application/json"]
    jsonschema.validate(create.body, json_schema(body_schema["schema"]))


def test_a_wrong_answer_fails_the_check() -> None:
    # The check can fail: a droplet without its required fields is refused by the schema.
    bad = Seen("GET", "/v2/droplets/1", {}, None, 200, {"droplet": {"id": 1}},
               {"ratelimit-limit": "1", "ratelimit-remaining": "1", "ratelimit-reset": "1"},
               0.0)  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        check(bad)


def test_the_fakes_check_hook_keeps_what_a_wrong_answer_breaks(fake_do: FakeDigitalOcean) -> None:
    # The hook above can fail: a droplet in a status DigitalOcean never gives is reported.
    fake_do.check = check
    with fake_do.lock:
        fake_do.droplets[1] = FakeDroplet(
            1,
            {"name": "odd", "image": 1, "region": "nyc3", "size": "s-1vcpu-1gb", "tags": []},
            status="dreaming",
        )
    request = urllib.request.Request(f"{fake_do.url}/v2/droplets/1",
                                     headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    [problem] = fake_do.problems
    assert problem.startswith("GET /v2/droplets/1 -> 200: ") and "dreaming" in problem
