"""Tasks in a microVM and in a container with network "none" reach the gateway and the egress
proxy: the VM over its exec channel (ssh remote forwards to the host's sockets, nothing runs
in the guest), the container through the bound channel directory and the perl forwarder (its
image has no python). The agent is bash alone, so it runs in either image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.e2e.conftest import HalCli
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import run_bash_agent

from hal9999.gateway.channel import GatewayPaths

pytestmark = [pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.qemu
def test_a_vm_task_calls_the_model_and_egress_through_the_gateway(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream, dummy_key: str
) -> None:
    hal_cli.env |= {"HAL_PROVIDER": "qemu", "HAL_QEMU_IMAGES": os.environ["HAL_QEMU_IMAGES"]}
    # A home deep enough that egress.sock's path passes sun_path: ssh refused to forward the
    # guest's port to it ("Bad remote forwarding specification"), as on xdist's deeper homes.
    deep = hal_cli.home.parent / ("h" * max(1, 82 - len(str(hal_cli.home.parent))))
    assert len(str(GatewayPaths(deep).egress_socket)) > 107
    hal_cli.home = deep
    hal_cli.env["HAL_HOME"] = str(deep)
    run_bash_agent(hal_cli, bug_repo, upstream, dummy_key, "qemu")


@pytest.mark.podman
def test_a_container_task_calls_the_model_and_egress_through_the_gateway(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream, dummy_key: str
) -> None:
    hal_cli.env |= {"HAL_PROVIDER": "docker", "HAL_DOCKER_URL": os.environ["HAL_DOCKER_URL"]}
    run_bash_agent(hal_cli, bug_repo, upstream, dummy_key, "docker")
