"""A task (``hal run --egress-only``, the daemon API's ``egress_only``) or an untrusted project
hal.toml (``[gateway] egress_only``) may only NARROW the egress allow-list: a host config
allows that the task's list drops is refused with an ``egress_denied`` event, and neither
can add a host config does not allow."""

from __future__ import annotations

from pathlib import Path

from tests.support.gateway import connect

from hal9999.agents.registry import resolve_agent
from hal9999.allowlist import allowed, intersect
from hal9999.config import GatewayConfig, HalConfig, load_config_sources
from hal9999.events.models import EgressDenied, Event
from hal9999.gateway.channel import Grant, new_token
from hal9999.gateway.proxy import Gateway
from hal9999.gateway.tasks import GatewayUsage, route_for, save_budget


def test_intersection_keeps_only_hosts_both_lists_allow() -> None:
    config = ["pypi.org", "*.github.com", "git.example:22", "*.npmjs.org"]
    task = ["pypi.org", "api.github.com", "*.github.com:22", "evil.example", "*.org"]
    both = intersect(task, config)
    probes = [("pypi.org", 443), ("api.github.com", 443), ("raw.github.com", 443),
              ("api.github.com", 22), ("evil.example", 443), ("registry.npmjs.org", 443),
              ("git.example", 22), ("x.org", 443)]  # fmt: skip
    for host, port in probes:
        want = allowed(host, port, task) and allowed(host, port, config)
        assert allowed(host, port, both) == want, (host, port, both)
    assert "evil.example" not in both and "*.org" not in both


def test_task_list_narrows_the_route_and_never_widens(tmp_path: Path) -> None:
    gateway = GatewayConfig(egress=["pypi.org", "registry.npmjs.org"], egress_only=["pypi.org",
                            "registry.npmjs.org", "files.pythonhosted.org"])  # fmt: skip
    config = HalConfig(home=tmp_path, gateway=gateway)
    save_budget(tmp_path, None, None, None, ["pypi.org", "evil.example"])
    agent = resolve_agent("claude", config.agent_settings("claude"))
    route = route_for(config, agent, "t1", {"ANTHROPIC_API_KEY": "sk-x"}, {}, budget=tmp_path)
    assert route is not None
    assert route.grant.egress_only == ["pypi.org"]
    plain = route_for(config, agent, "t2", {"ANTHROPIC_API_KEY": "sk-x"}, {})
    assert plain is not None and plain.grant.egress_only == gateway.egress_only
    # The narrowing list never reaches the limits the gateway reads from settings.
    assert "egress_only" not in route.grant.settings


async def test_host_config_allows_but_task_drops_is_denied(
    egress: tuple[Gateway, str], tmp_path: Path
) -> None:
    gateway, sock = egress
    grant = Grant(task_id="t1", token=new_token(), upstream="https://x", key="k",
                  egress=["pypi.org", "registry.npmjs.org"], egress_only=["pypi.org"])  # fmt: skip
    gateway.register(grant)
    status, reader, writer = await connect(sock, "registry.npmjs.org:443", grant.token)
    body = await reader.read(4096)
    writer.close()
    assert status.startswith(b"HTTP/1.1 403")
    assert b"--egress-only" in body, "the refusal names the fix"
    # Nor can the task's own list add a host config does not allow.
    wider = Grant(task_id="t2", token=new_token(), upstream="https://x", key="k",
                  egress=["pypi.org"], egress_only=["pypi.org", "evil.example"])  # fmt: skip
    gateway.register(wider)
    status, _, writer = await connect(sock, "evil.example:443", wider.token)
    writer.close()
    assert status.startswith(b"HTTP/1.1 403")
    await gateway.drain()
    events: list[Event] = []
    GatewayUsage(gateway.store, "t1", after=0).pump(events.append, final=True)
    assert events == [EgressDenied(host="registry.npmjs.org", port=443, method="CONNECT")]


def test_untrusted_project_may_narrow_egress_only(tmp_path: Path) -> None:
    user, project = tmp_path / "user", tmp_path / "repo"
    (user / ".config" / "hal9999").mkdir(parents=True)
    project.mkdir()
    (user / ".config" / "hal9999" / "config.toml").write_text(
        '[gateway]\negress = ["pypi.org", "registry.npmjs.org"]\n'
        'egress_only = ["pypi.org", "registry.npmjs.org"]\n'
    )
    (project / "hal.toml").write_text(
        '[gateway]\negress_only = ["pypi.org", "evil.example"]\negress = ["evil.example"]\n'
    )
    config, sources = load_config_sources({"HOME": str(user)}, project)
    assert config.gateway.egress == ["pypi.org", "registry.npmjs.org"]
    assert config.gateway.egress_only == ["pypi.org"], "narrowed, and never a new host"
    assert sources.project is not None and sources.project.ignored == ("gateway.egress",)


def test_bad_narrowing_entries_are_refused_in_one_line() -> None:
    import pytest

    from hal9999.errors import UsageError
    from hal9999.tasks.request import run_request

    with pytest.raises(UsageError, match="egress_only"):
        request = {"prompt": "p", "agent": "claude", "provider": "bwrap",
                   "process_manager": "tmux", "egress_only": ["-x evil"]}  # fmt: skip
        run_request(request, wire=False)
