"""The disk limit (``disk_mb``) of a docker sandbox, against real Podman: no single file past
the limit (RLIMIT_FSIZE), the total of its writable places measured from the host, and a
``hal run`` past its limit stopped as ``disk_limit`` with its work back and no container
left (as for bwrap: tests/cli/test_disk.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.cli.conftest import demo_repo, hal, hal_env  # noqa: F401  (fixtures)
from tests.support.hal import Hal

from hal9999.errors import DiskLimitExceeded
from hal9999.providers import limits
from hal9999.providers.docker.provider import DockerProvider
from hal9999.providers.registry import load_provider
from hal9999.spec import Resources, SandboxSpec, ShellCommand

pytestmark = [pytest.mark.podman, pytest.mark.timeout(240)]


@pytest.fixture
async def provider(hal_home: Path) -> AsyncIterator[DockerProvider]:
    made = load_provider("docker", state_dir=hal_home / "sandboxes" / "docker")
    assert isinstance(made, DockerProvider)
    yield made
    for info in await made.list():
        await made.destroy(info.id)


async def test_no_file_outgrows_the_limit_and_the_total_is_watched(
    provider: DockerProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    spec = SandboxSpec(provider="docker", network="none", workspace=workspace,
                       resources=Resources(disk_mb=2))  # fmt: skip
    async with await provider.create(spec) as sandbox:
        big = await sandbox.exec(ShellCommand(script="head -c 3000000 /dev/zero > /tmp/big"))
        # SIGXFSZ for the writer (128 + 25), or EFBIG where it is ignored.
        assert big.exit_code == 153 or b"File too large" in big.stderr, big
        size = await sandbox.exec(ShellCommand(script="stat -c %s /tmp/big"))
        assert int(size.stdout) <= 2 << 20
        # Each file under the limit, together past it: /tmp and the home are volumes of the
        # container, measured from the host with the workspace.
        fill = ("head -c 1500000 /dev/zero > /home/hal/a; head -c 1500000 /dev/zero > /tmp/b; "
                "head -c 1000000 /dev/zero > /workspace/c")  # fmt: skip
        assert (await sandbox.exec(ShellCommand(script=fill))).ok
        use = await sandbox.disk_use()  # type: ignore[attr-defined]
        assert use.limit_bytes == 2 << 20 and use.used_bytes >= 5_000_000 and use.over
        monkeypatch.setattr(limits, "FIRST_DISK_CHECK_S", 0)
        watchdog = limits.DiskWatchdog(sandbox, tmp_path)
        with pytest.raises(DiskLimitExceeded, match="over its disk limit of 2 MiB"):
            await watchdog.check()


FILL = (
    "sh -c 'echo kept > kept.txt; i=0; while [ $i -lt 40 ]; do i=$((i+1)); "
    "head -c 500000 /dev/zero > /tmp/fill$i; done; echo filled; sleep 60'"
)


@pytest.mark.tmux
def test_a_run_past_its_disk_limit_stops_and_its_work_comes_back(
    hal: Hal,  # noqa: F811
    hal_env: dict[str, str],  # noqa: F811
) -> None:
    hal_env |= {"HAL_PROVIDER": "docker", "HAL_DOCKER_URL": os.environ["HAL_DOCKER_URL"]}
    start = time.monotonic()
    out = hal("run", "--agent", FILL, "x", "--json", env={"HAL_DISK_MB": "10"}, timeout=180)
    assert time.monotonic() - start < 60, "stopped by the watchdog, not by the agent's sleep"
    assert "Traceback" not in out.stderr
    task = json.loads(out.stdout)
    assert task["provider"] == "docker"
    assert task["status"] == "failed" and task["error_code"] == "disk_limit", task
    assert "disk limit of 10 MiB" in task["error_message"]
    assert "kept.txt" in Path(task["session_dir"], "result.patch").read_text()
    import docker

    client = docker.DockerClient(base_url=os.environ["HAL_DOCKER_URL"])
    try:
        left = client.containers.list(all=True, filters={"label": "hal9999.sandbox"})
        assert [c.name for c in left if c.name == f"hal-{task['sandbox_id']}"] == []
    finally:
        client.close()
