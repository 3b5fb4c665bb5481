"""The ``ray`` provider on a real two-node Ray cluster (tests/ray_cluster.py): placement over
both nodes, Ray's unauthenticated ports out of every sandbox's reach, and a node killed
under a running command. The contract suite runs against it too (test_contract.py[ray])."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.ray_cluster import RayCluster

from hal9999.errors import CapabilityError, ExecError
from hal9999.providers.base import Provider
from hal9999.providers.ray.host import ray_ports
from hal9999.providers.ray.provider import RayProvider
from hal9999.providers.registry import load_provider
from hal9999.spec import ArgvCommand, Resources, SandboxSpec, ShellCommand

pytestmark = [pytest.mark.ray, pytest.mark.bwrap, pytest.mark.slow]

CONNECT = (
    "import socket,sys\nbad=[]\nfor t in sys.argv[1:]:\n h,p=t.rsplit(':',1)\n"
    " s=socket.socket()\n s.settimeout(3)\n try:\n  s.connect((h,int(p)))\n  bad.append(t)\n"
    " except OSError:\n  pass\nprint(' '.join(bad))\n"
)
"""Inside a sandbox: connect to each ``host:port``; print the ones that answered."""


def ray_provider(cluster: RayCluster, home: Path, **settings: Any) -> RayProvider:
    provider = load_provider("ray", state_dir=home / "ray", settings=cluster.settings(**settings))
    assert isinstance(provider, RayProvider)
    return provider


async def test_twenty_jobs_spread_over_both_nodes(ray_cluster: RayCluster, hal_home: Path,
                                                  tmp_path: Path) -> None:  # fmt: skip
    provider = ray_provider(ray_cluster, hal_home)

    async def job(n: int) -> tuple[str, Path]:
        workspace = tmp_path / f"ws{n}"
        workspace.mkdir()
        (workspace / "in.txt").write_text(f"job {n}\n")
        spec = SandboxSpec(provider="ray", network="none", workspace=workspace)
        async with await provider.create(spec) as sandbox:
            result = await sandbox.exec(ShellCommand(script="cat in.txt > out.txt; echo done"))
            assert result.stdout == b"done\n"
            return sandbox.node, workspace  # type: ignore[attr-defined]

    done = await asyncio.gather(*(job(n) for n in range(20)))
    nodes = [node for node, _ in done]
    assert sorted(set(nodes)) == ["head", "w1"]
    assert nodes.count("head") == nodes.count("w1") == 10  # spread, not piled on one node
    for n, (_, workspace) in enumerate(done):
        assert (workspace / "out.txt").read_text() == f"job {n}\n"  # the work came back
    assert await provider.list() == []
    # One host actor per node, each really on its own Ray node.
    head, w1 = await provider.actor("head"), await provider.actor("w1")
    (_, (_, head_node, _)), (_, (_, w1_node, _)) = [await a.ping.remote() for a in (head, w1)]
    assert head_node != w1_node


async def test_ray_ports_are_out_of_reach_of_every_sandbox(
    ray_cluster: RayCluster, hal_home: Path, tmp_path: Path
) -> None:
    provider = ray_provider(ray_cluster, hal_home, host_network=True)
    await provider.nodes()  # joins the cluster
    targets = [f"{h}:{p}" for h, p in ray_ports(ray_cluster.address)]
    gcs_port = ray_cluster.address.rsplit(":", 1)[1]
    assert any(t.endswith(f":{gcs_port}") for t in targets)
    python = ArgvCommand(argv=("python3", "-c", CONNECT, *targets))
    # network none: a hostile agent's connections to the GCS and the raylets all fail.
    async with await provider.create(SandboxSpec(provider="ray", network="none")) as sandbox:
        result = await sandbox.exec(python, timeout=60)
        assert result.ok, result.stderr
        assert result.stdout.strip() == b"", f"reached Ray from a sandbox: {result.stdout!r}"
    # network host (slirp): either nothing of Ray answers from inside, or the node refuses
    # host-network sandboxes because a real one there reached Ray.
    try:
        sandbox = await provider.create(SandboxSpec(provider="ray", network="host"))
    except CapabilityError as exc:
        assert "can reach Ray's ports" in exc.message and exc.hint
        # The refusal is not a guess: a host-network bwrap sandbox here does reach Ray.
        bwrap = load_provider("bwrap", state_dir=hal_home / "bwrap")
        async with await bwrap.create(SandboxSpec(provider="bwrap", network="host")) as local:
            probe = await local.exec(python, timeout=60)
        reached = probe.stdout.split()
        assert reached, (exc.message, probe)
        assert all(not t.startswith(b"127.") for t in reached)
    else:
        async with sandbox:
            result = await sandbox.exec(python, timeout=60)
            assert result.stdout.strip() == b"", f"reached Ray from a sandbox: {result.stdout!r}"
    assert await provider.list() == []


@pytest.mark.ray_node("w2", 50)  # a third node, with the most room: sandboxes go there first
async def test_node_killed_mid_command_fails_clearly_and_loses_nothing(
    ray_cluster: RayCluster, hal_home: Path, tmp_path: Path
) -> None:
    port = ray_cluster.node_port("w2")  # killed below
    provider: Provider = ray_provider(ray_cluster, hal_home, call_timeout_s=8)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    spec = SandboxSpec(provider="ray", network="none", workspace=workspace)
    sandbox = await provider.create(spec)
    assert sandbox.node == "w2"  # type: ignore[attr-defined]
    assert (await sandbox.exec(ShellCommand(script="echo step1 > progress"))).ok
    running = asyncio.create_task(
        sandbox.exec(ShellCommand(script="echo step2 >> progress; sleep 3600"))
    )
    await asyncio.sleep(2)
    assert ray_cluster.kill_worker(port)
    # The command sleeps an hour: failing within the (generous) bound is the node's death.
    with pytest.raises(ExecError, match="ray node w2") as info:
        await asyncio.wait_for(running, 90)
    assert "\n" not in info.value.one_line() and info.value.hint
    # Nothing lost: the session on the hal host holds what the last sync brought back.
    assert (workspace / "progress").read_text() == "step1\n"
    # The task can go again: a new sandbox for the same session lands on a live node.
    again = await provider.create(spec)
    assert again.node in {"head", "w1"}  # type: ignore[attr-defined]
    assert (await again.exec(ArgvCommand(argv=("cat", "progress")))).stdout == b"step1\n"
    await provider.destroy(again.id)
    await provider.destroy(sandbox.id)  # the lost node's record goes all the same
    assert await provider.list() == []


async def test_a_pull_past_the_disk_limit_is_refused_on_the_node(
    ray_cluster: RayCluster, hal_home: Path, tmp_path: Path
) -> None:
    # A pull's tar is held whole on the node and sent over Ray: the agent sized it, past
    # anything the sandbox may hold. Now the node kills the tar where an ssh pull stops.
    provider = ray_provider(ray_cluster, hal_home)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    spec = SandboxSpec(provider="ray", network="none", workspace=workspace,
                       resources=Resources(disk_mb=1))  # fmt: skip
    async with await provider.create(spec) as sandbox:
        script = "for i in 1 2 3; do head -c 900000 /dev/urandom > f$i; done"
        assert (await sandbox.exec(ShellCommand(script=script))).ok
        with pytest.raises(ExecError, match="over the sandbox's disk limit of 1 MiB"):
            await sandbox.pull()  # type: ignore[attr-defined]
    assert not (workspace / "f1").exists(), "nothing was brought back"
