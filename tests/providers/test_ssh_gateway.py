"""A task on an ssh host with network "none" reaches the LLM gateway and the egress proxy: the
relay forwards the gateway's unix sockets into the sandbox's channel directory on the host
over its asyncssh connection (a remote path forward), and the agent's in-sandbox forwarder
(inside bwrap there, no network) connects to them. Against the real sshd of tests/sshd.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.e2e.conftest import HalCli, bug_repo, dummy_key, files_containing, hal_cli  # noqa: F401
from tests.gateway.upstream import StormUpstream
from tests.sshd import Sshd
from tests.support.gateway import run_bash_agent

pytestmark = [pytest.mark.ssh, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(300)]


def test_an_ssh_task_calls_the_model_and_egress_through_the_gateway(
    sshd_server: Sshd,
    hal_cli: HalCli,  # noqa: F811
    bug_repo: Path,  # noqa: F811
    upstream: StormUpstream,
    dummy_key: str,  # noqa: F811
) -> None:
    hal_cli.env["HAL_PROVIDER"] = "ssh"
    host = "\n".join(f"{k} = {json.dumps(v)}" for k, v in sshd_server.host_entry().items())
    # The model call goes through the forwarded socket; the real key is added on the host.
    run_bash_agent(hal_cli, bug_repo, upstream, dummy_key, "ssh",
                   more_config=f"[[providers.ssh.hosts]]\n{host}\n")  # fmt: skip
    # The key reached neither the ssh host's files nor hal's.
    assert files_containing(sshd_server.home, dummy_key.encode()) == []


KEY = "E2E_LLM_API_KEY"
"""The host variable of the fake upstream's key (what test_kubernetes_run imports)."""
