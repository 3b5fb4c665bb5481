"""What a command leaves running in a ``docker`` sandbox, against real Podman: ended by
``end_processes`` however it hid, with the container's init (and so its warm state) kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.docker import docker_provider

from hal9999.providers.docker.provider import DockerProvider, container_name
from hal9999.spec import SandboxSpec, ShellCommand

pytestmark = [pytest.mark.podman, pytest.mark.timeout(180)]


@pytest.fixture
async def provider(hal_home: Path) -> AsyncIterator[DockerProvider]:
    async with docker_provider(hal_home) as made:
        yield made


# Writers that hide from an exec's kill token (environment cleared, a session of their own),
# one under a name with the stat file's separators in it.
LEAVE = r"""
(env -i setsid sh -c 'while :; do date +%s%N >> /workspace/f; sleep 0.01; done' >/dev/null 2>&1 &)
cp /bin/sleep '/tmp/x) 1 1) S 1'
('/tmp/x) 1 1) S 1' 600 >/dev/null 2>&1 &)
(sh -c 'while :; do sleep 0.01 & wait; done' >/dev/null 2>&1 &)
exit 0
"""

# Whether the init reaped its children (waiting up to 5 s for it).
REAPED = r"""
for _ in $(seq 100); do ps -o stat= --ppid 1 | grep -q Z || exit 0; sleep 0.05; done
exit 1
"""


async def test_what_a_command_left_is_ended_and_the_container_lives_on(
    provider: DockerProvider, tmp_path: Path
) -> None:
    spec = SandboxSpec(provider="docker", workspace=tmp_path)
    async with await provider.create(spec) as box:
        init = (await box.exec(ShellCommand(script="cut -d' ' -f22 /proc/1/stat"))).text()
        assert (await box.exec(ShellCommand(script=LEAVE))).ok
        written = tmp_path / "f"
        for _ in range(100):
            if written.exists() and written.stat().st_size > 0:
                break
            await asyncio.sleep(0.05)
        assert written.stat().st_size > 0, "the writer never ran"
        assert await box.end_processes()
        size = written.stat().st_size
        await asyncio.sleep(0.5)
        assert written.stat().st_size == size, "the writer went on after end_processes"
        # The init (uid 0) reaps what it inherited of the agent's uid: no zombie stays.
        assert (await box.exec(ShellCommand(script=REAPED))).ok, "the init left zombies"
        # Alive, that is: the exec wrapper's own `head` may be a zombie of `ps` here (and
        # its SIGCHLD, had it come once `ps` runs, makes procps fail: the sleep lets it come
        # first).
        seen = await box.exec(ShellCommand(script="sleep 0.3; ps -eo stat=,args="))
        rows = [line.split(None, 1) for line in seen.text().splitlines()]
        left = sorted(args for stat, args in rows if not stat.startswith("Z"))
        assert left == ["ps -eo stat=,args=", "sleep infinity", "tini -s -- sleep infinity"], seen
        again = (await box.exec(ShellCommand(script="cut -d' ' -f22 /proc/1/stat"))).text()
        assert again == init, "the container was restarted (its warm state would be lost)"


async def test_a_container_whose_init_ended_is_started_again(
    provider: DockerProvider, tmp_path: Path
) -> None:
    # The agent's uid cannot signal the init or its `sleep` (they run as uid 0), but an init
    # can still end (the engine, the OOM killer): nothing can be ended inside a stopped
    # container, so the runner's step restarts it (a stop of a stopped container is no
    # error) for collection.
    from hal9999.tasks import finish

    spec = SandboxSpec(provider="docker", workspace=tmp_path)
    async with await provider.create(spec) as box:
        kill = "kill -9 $(ps -o pid= --ppid 1) 1"
        refused = await box.exec(ShellCommand(script=kill))
        assert not refused.ok and refused.stderr.count(b"Operation not permitted") == 2, refused
        assert (await provider.get(box.id)).running, "the agent stopped the container"
        provider.client().api.kill(container_name(box.id))
        for _ in range(100):
            if not (await provider.get(box.id)).running:
                break
            await asyncio.sleep(0.05)
        assert not (await provider.get(box.id)).running, "the container did not stop"
        again = await finish.end_leftovers(provider, box)
        assert (await again.exec(ShellCommand(script="echo alive"))).stdout == b"alive\n"
