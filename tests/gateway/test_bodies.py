"""Stored request bodies: off by default; with ``store_bodies`` masked (the task's secrets,
the key, the placeholder token) before they reach the store. And per-provider egress hosts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.e2e.conftest import HalCli
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import KEY, call, client, grant_for, use_caller

from hal9999.agents.registry import resolve_agent
from hal9999.config import GatewayConfig, HalConfig
from hal9999.gateway.proxy import Gateway
from hal9999.gateway.tasks import route_for

CANARY = "canary-secret-7f3a9c2e5b1d"


async def test_bodies_are_stored_masked_only_when_asked(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    keeps = grant_for(upstream, "keeps", settings={"store_bodies": True}, mask=[CANARY])
    plain = grant_for(upstream, "plain")
    gw.register(keeps)
    gw.register(plain)
    async with client(sock) as http:
        for grant in (keeps, plain):
            body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [
                {"role": "user", "content": f"leak {CANARY} and {KEY} and {grant.token} ok"}
            ]}  # fmt: skip
            answer = await http.post("/v1/messages", json=body, headers={"x-api-key": grant.token})
            assert answer.status_code == 200
        assert (await call(http, keeps.token)).status_code == 200
    await gw.drain()
    [stored, second] = gw.store.gateway_requests("keeps")
    assert stored.body is not None and second.body is not None
    assert "leak [REDACTED] and [REDACTED] and [REDACTED] ok" in stored.body
    assert json.loads(second.body)["model"] == "claude-sonnet-4-5"
    [row] = gw.store.gateway_requests("plain")
    assert row.body is None, "bodies are not stored unless the config asks"
    database = Path(gw.store.path).read_bytes()
    for secret in (CANARY, KEY, keeps.token):
        assert secret.encode() not in database


def test_provider_egress_hosts_join_the_tasks_list(tmp_path: Path) -> None:
    gateway_config = GatewayConfig(
        egress=["pypi.org"], provider_egress={"qemu": ["deb.debian.org"]}
    )
    config = HalConfig(home=tmp_path, gateway=gateway_config)
    agent = resolve_agent("claude", config.agent_settings("claude"))
    environ = {"ANTHROPIC_API_KEY": "sk-x"}
    on_qemu = route_for(config, agent, "t1", environ, {}, provider="qemu")
    on_bwrap = route_for(config, agent, "t2", environ, {}, provider="bwrap")
    assert on_qemu is not None and on_bwrap is not None
    assert on_qemu.grant.egress == ["pypi.org", "deb.debian.org"]
    assert on_bwrap.grant.egress == ["pypi.org"]
    assert on_qemu.grant.mask == [], "secrets go to the gateway only to mask stored bodies"
    stores = HalConfig(home=tmp_path, gateway=GatewayConfig(store_bodies=True))
    route = route_for(stores, agent, "t3", environ, {"MY_TOKEN": CANARY})
    assert route is not None and route.grant.mask == [CANARY]


@pytest.mark.bwrap
@pytest.mark.tmux
@pytest.mark.slow
def test_hal_task_requests_shows_bodies_only_when_asked(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream
) -> None:
    use_caller(hal_cli, bug_repo, upstream, "[gateway]\nstore_bodies = true\n")
    out = hal_cli("run", "--agent", "claude", "call")
    assert out.returncode == 0, out.stderr[-2000:]
    [task] = json.loads(hal_cli("task", "list", "--json").stdout)
    plain = json.loads(hal_cli("task", "requests", task["id"], "--json").stdout)
    assert len(plain) == 3 and all("body" not in c for c in plain)
    stored = json.loads(hal_cli("task", "requests", task["id"], "--json", "--bodies").stdout)
    assert [json.loads(c["body"])["model"] for c in stored] == ["claude-sonnet-4-5"] * 3
