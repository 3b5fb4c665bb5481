"""A ``docker`` create or reset whose hal is killed (SIGKILL) midway, against real Podman:
the next hal's listing (what the daemon's recovery does at start-up) or create removes the
container, whole or half made, and gives its uid back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.docker import docker_provider, docker_workspace

import hal9999
from hal9999.providers.docker.provider import LABEL, DockerProvider, container_name
from hal9999.providers.host import user as sandboxuser
from hal9999.spec import SandboxSpec

pytestmark = [pytest.mark.podman, pytest.mark.timeout(180)]


@pytest.fixture
async def provider(hal_home: Path) -> AsyncIterator[DockerProvider]:
    async with docker_provider(hal_home) as made:
        yield made


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return docker_workspace(tmp_path)


# `python -c KILLED POINT STATE_DIR WORKSPACE [SANDBOX]`: a create (or a reset of SANDBOX)
# that SIGKILLs itself at POINT, printing the sandbox's id first. Patches made here, in
# the killed process: hal has no hook of its own to keep.
KILLED = """
import asyncio, os, signal, sys
from pathlib import Path
from hal9999.providers.docker import provider as docker
from hal9999.providers.host import user as sandboxuser
from hal9999.spec import SandboxSpec

point, state_dir, workspace, *reset = sys.argv[1:]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
real_allocate, real_make, real_call = (
    sandboxuser.allocate, docker.DockerProvider._make_container, docker.DockerProvider.call)
def allocate(owner):
    print(owner.split()[-1], flush=True)
    uid = real_allocate(owner)
    if point == "allocated":  # before the create notes its uid anywhere
        die()
    return uid
async def make(self, sandbox_id, spec, uid):
    print(sandbox_id, flush=True)
    if point == "noted":  # a create's uid noted, or a reset's container removed
        die()
    await real_make(self, sandbox_id, spec, uid)
async def call(self, what, fn, *args, **kwargs):
    if what == "start" and point == "made":  # the new container made, not started
        die()
    return await real_call(self, what, fn, *args, **kwargs)
real_open, real_link = os.open, os.link
def locked(path):  # a uid's lock file made, by either way of writing it
    made = Path(path)
    if point == "locking" and made.parent == sandboxuser.LOCK_DIR and made.name.isdigit():
        print(path, flush=True)
        die()
def opened(path, *args, **kwargs):
    fd = real_open(path, *args, **kwargs)
    locked(path)
    return fd
def linked(source, path, *args, **kwargs):
    real_link(source, path, *args, **kwargs)
    locked(path)
os.open, os.link = opened, linked
sandboxuser.allocate = allocate
docker.DockerProvider._make_container = make
docker.DockerProvider.call = call
provider = docker.DockerProvider(state_dir=Path(state_dir))
if reset:
    asyncio.run(provider.reset(reset[0]))
else:
    asyncio.run(provider.create(SandboxSpec(provider="docker", workspace=Path(workspace))))
sys.exit("not killed")
"""


async def _killed(provider: DockerProvider, point: str, workspace: Path, *reset: str) -> str:
    """Run the killed create (or reset); the sandbox's id."""
    return (await _killed_saying(provider, point, workspace, *reset))[0]


async def _killed_saying(
    provider: DockerProvider, point: str, workspace: Path, *reset: str
) -> list[str]:
    """Run the killed create (or reset); what it printed: the sandbox's id, then more."""
    env = {**os.environ, "PYTHONPATH": str(Path(hal9999.__file__).parents[1])}
    argv = [point, str(provider.state_dir), str(workspace), *reset]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED, *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == -9, err.decode()[-2000:]
    return out.decode().split()


def _locked(sandbox_id: str) -> list[Path]:
    """The uid lock files of ``sandbox_id``."""
    if not sandboxuser.LOCK_DIR.is_dir():
        return []
    owner = f"docker {sandbox_id}\n"
    found = []
    for path in sandboxuser.LOCK_DIR.iterdir():
        try:
            if path.read_text() == owner:
                found.append(path)
        except FileNotFoundError:  # another sandbox's (the other test worker's) released
            continue
    return found


def _containers(provider: DockerProvider, sandbox_id: str) -> list[dict[str, object]]:
    found = provider.client().api.containers(all=True, filters={"label": f"{LABEL}={sandbox_id}"})
    return list(found)


@pytest.mark.parametrize("point", ["allocated", "noted", "made"])
async def test_a_create_killed_midway_is_undone_by_the_next_listing(
    provider: DockerProvider, workspace: Path, point: str
) -> None:
    sandbox_id = await _killed(provider, point, workspace)
    if sandboxuser.privileged():
        assert len(_locked(sandbox_id)) == 1, "the killed create holds a uid"
    assert len(_containers(provider, sandbox_id)) == (point == "made")
    assert sandbox_id not in [info.id for info in await provider.list()]
    assert _containers(provider, sandbox_id) == []
    assert _locked(sandbox_id) == [], "the uid was not given back"
    assert [p.name for p in provider.state_dir.iterdir() if "unfinished" in p.name] == []


async def test_a_create_killed_midway_is_undone_by_the_next_create(
    provider: DockerProvider, workspace: Path
) -> None:
    sandbox_id = await _killed(provider, "made", workspace)
    assert len(_containers(provider, sandbox_id)) == 1
    async with await provider.create(SandboxSpec(provider="docker", workspace=workspace)):
        assert _containers(provider, sandbox_id) == []
        assert _locked(sandbox_id) == []


@pytest.mark.parametrize("point", ["noted", "made"])
async def test_a_reset_killed_between_its_steps_is_undone_by_the_next_listing(
    provider: DockerProvider, workspace: Path, point: str
) -> None:
    box = await provider.create(SandboxSpec(provider="docker", workspace=workspace))
    assert await _killed(provider, point, workspace, box.id) == box.id
    if sandboxuser.privileged():
        assert len(_locked(box.id)) == 1, "the sandbox's uid is still taken"
    # The old container is gone; the new one made (not started) or not yet.
    assert len(_containers(provider, box.id)) == (point == "made")
    assert box.id not in [info.id for info in await provider.list()]
    assert _containers(provider, box.id) == []
    assert _locked(box.id) == [], "the uid was not given back"


async def test_a_listing_during_a_create_leaves_it_alone(
    provider: DockerProvider, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another hal (or this one's daemon) lists while the create runs: its note is held.
    real = provider._make_container
    seen: list[list[str]] = []

    async def make(sandbox_id: str, spec: SandboxSpec, uid: int) -> None:
        await real(sandbox_id, spec, uid)
        seen.append([info.id for info in await provider.list()])

    monkeypatch.setattr(provider, "_make_container", make)
    async with await provider.create(SandboxSpec(provider="docker", workspace=workspace)) as box:
        assert seen == [[box.id]]
        assert (await provider.get(box.id)).running
        if sandboxuser.privileged():
            assert len(_locked(box.id)) == 1


async def test_a_create_killed_inside_its_uid_allocation_gives_the_uid_back(
    provider: DockerProvider, workspace: Path
) -> None:
    # Killed between the lock file's creation and the write of its owner, a create left an
    # empty lock file: a uid nobody could name, taken for ever.
    if not sandboxuser.privileged():
        pytest.skip("a sandbox has a uid of its own only under a root hal")
    sandbox_id, lock = await _killed_saying(provider, "locking", workspace)
    assert Path(lock).exists()
    assert sandbox_id not in [info.id for info in await provider.list()]
    assert not Path(lock).exists(), "the uid was not given back"
    assert _locked(sandbox_id) == []
    draft = sandboxuser._draft(f"docker {sandbox_id}")
    assert [p for p in sandboxuser.LOCK_DIR.iterdir() if p.name.startswith(draft)] == []
    assert [p.name for p in provider.state_dir.iterdir() if "unfinished" in p.name] == []


@pytest.mark.parametrize("text", ["", "²", "garbage"])
async def test_a_note_cut_short_or_garbled_still_gives_its_uid_back(
    provider: DockerProvider, text: str
) -> None:
    # A create killed between its note's truncate and its write of the uid (Note.record)
    # left the note empty: the uid it had allocated stayed taken for ever. A garbled one
    # ("²" is a digit to str.isdigit, not to int) made every listing and create raise.
    if not sandboxuser.privileged():
        pytest.skip("a sandbox has a uid of its own only under a root hal")
    sandbox_id = secrets.token_hex(6)
    sandboxuser.allocate(f"docker {sandbox_id}")
    provider.state_dir.mkdir(parents=True, exist_ok=True)
    (provider.state_dir / f"unfinished-{sandbox_id}").write_text(text)
    assert sandbox_id not in [info.id for info in await provider.list()]
    assert _locked(sandbox_id) == [], "the uid was not given back"
    assert [p.name for p in provider.state_dir.iterdir() if "unfinished" in p.name] == []


# `python -c SNAPSHOT_KILLED STATE_DIR SANDBOX`: a snapshot of SANDBOX that SIGKILLs itself
# right after the engine's commit of the container, before its staging container is made,
# printing the commit's id first.
SNAPSHOT_KILLED = """
import asyncio, os, signal, sys
from pathlib import Path
from docker.api.client import APIClient
from hal9999.providers.docker import provider as docker

state_dir, sandbox_id = sys.argv[1:]
real_commit = APIClient.commit
def commit(self, *args, **kwargs):
    found = real_commit(self, *args, **kwargs)
    print(found["Id"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
APIClient.commit = commit
provider = docker.DockerProvider(state_dir=Path(state_dir))
asyncio.run(provider.snapshot(sandbox_id, "test-killed-commit-%d" % os.getpid()))
sys.exit("not killed")
"""


async def test_a_snapshot_killed_after_its_commit_is_undone_by_the_next_listing(
    provider: DockerProvider, workspace: Path
) -> None:
    # Between the commit and the labelled staging container the commit belonged to nothing:
    # a hal killed there left an untagged image no destroy or prune of hal's ever removed.
    api = provider.client().api

    def images() -> set[str]:
        return {i.removeprefix("sha256:") for i in api.images(all=True, quiet=True)}

    async with await provider.create(SandboxSpec(provider="docker", workspace=workspace)) as box:
        env = {**os.environ, "PYTHONPATH": str(Path(hal9999.__file__).parents[1])}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SNAPSHOT_KILLED, str(provider.state_dir), box.id, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == -9, err.decode()[-2000:]
        base = out.decode().split()[0].removeprefix("sha256:")
        assert base in images(), "the killed snapshot's commit is there"
        assert [info.id for info in await provider.list()] == [box.id], "the sandbox stays"
        assert base not in images(), "the killed snapshot's commit was left for ever"
        assert [p.name for p in provider.state_dir.iterdir() if "unfinished" in p.name] == []
        assert (await provider.get(box.id)).running


async def test_an_unfinished_snapshot_step_never_takes_the_forks_of_its_image(
    provider: DockerProvider, workspace: Path
) -> None:
    # The step's label went on into the tagged image (its commit's, then the staging
    # container's), so every fork of the snapshot carried it too: a step's undo (its hal
    # killed after the tag, its note left; the fork made meanwhile by another process, past
    # its own create's undo) force-removed those forks with the step's staging container.
    from hal9999.providers import unfinished
    from hal9999.providers.docker import snap as dockersnap

    spec = SandboxSpec(provider="docker", workspace=workspace)
    name = f"test-step-{os.getpid()}"
    async with await provider.create(spec) as box:
        image = await provider.snapshot(box.id, name)
    api = provider.client().api
    try:
        [fork] = await provider.fork(image, 1, spec)
        made = (api.inspect_image(image), api.inspect_container(container_name(fork.id)))
        labels = [found["Config"]["Labels"] or {} for found in made]
        # The step's note as a hal killed after the tag, before the note went, leaves it.
        step = labels[1].get(dockersnap.STEP_LABEL) or f"snapshot-{box.id}-{secrets.token_hex(6)}"
        with contextlib.suppress(RuntimeError), unfinished.noted(provider.state_dir, step):
            raise RuntimeError
        assert [info.id for info in await provider.list()] == [fork.id], "the fork stays"
        assert (await provider.get(fork.id)).running
        assert [found.get(dockersnap.STEP_LABEL, "") for found in labels] == ["", ""]
        await provider.destroy(fork.id)
    finally:
        api.remove_image(image, force=True)
