"""Snapshots and forks of ``docker`` sandboxes.

A snapshot is image ``hal9999:<name>``: the container committed, and its home (a volume,
which a commit leaves out) layered on top through a staging container. The staging container
is labelled with the sandbox (:data:`~hal9999.providers.docker.provider.STAGING_LABEL`), so one a
killed hal left goes with the sandbox (:meth:`DockerProvider._remove`); a snapshot that
fails removes its staging container and the commit under it. A hal killed between the
commit and its staging container (the commit's image then belongs to nothing) is covered by a
note of the step (:mod:`~hal9999.providers.unfinished`, ``snapshot-<sandbox>-<token>``) and a
:data:`STEP_LABEL` on the commit and the staging container (emptied on the tagged snapshot,
which its forks inherit): the next listing or create takes the note its process no longer
holds and removes both (:func:`undo`). A fork is a new
sandbox from the snapshot's image. Imported only when a snapshot or fork is made, or undone.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import tempfile
from typing import TYPE_CHECKING

from hal9999.errors import ConfigError, ProviderError
from hal9999.providers import limits, unfinished
from hal9999.providers.base import fork_all
from hal9999.providers.docker.engine import docker_sdk, engine_errors
from hal9999.providers.docker.provider import HOME, LABEL, SPEC_LABEL, STAGING_LABEL, container_name
from hal9999.providers.docker.sandbox import DockerSandbox
from hal9999.spec import SandboxSpec

if TYPE_CHECKING:
    from hal9999.providers.docker.provider import DockerProvider

STEP_LABEL = "hal9999.snapshot-step"
"""On a snapshot's commit and staging container: the step's note, whose undo removes them."""
STEP_PATTERN = re.compile(r"snapshot-[0-9a-f]{12}-[0-9a-f]{12}")

HOME_ARCHIVE_LIMIT = 20 << 30
"""Largest home a snapshot takes (bytes of archive) when the sandbox has no disk limit."""


async def snapshot(provider: DockerProvider, sandbox_id: str, name: str | None) -> str:
    """Save the sandbox as image ``hal9999:<name>``: its filesystem and its home; the
    workspace is the session's, not the image's, and ``/tmp`` is temporary."""
    found = await provider._inspect(sandbox_id)
    name = name or f"snap-{sandbox_id}-{secrets.token_hex(3)}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,127}", name):
        raise ConfigError(f"invalid snapshot name {name!r}", hint="lowercase, digits, .-_")
    spec = SandboxSpec.model_validate_json(found["Config"]["Labels"][SPEC_LABEL])
    disk_mb = limits.effective(spec.resources).disk_mb
    limit = (disk_mb << 20 if disk_mb else HOME_ARCHIVE_LIMIT) + (64 << 20)
    step = f"snapshot-{sandbox_id}-{secrets.token_hex(6)}"
    with unfinished.noted(provider.state_dir, step):
        await provider.call("snapshot", _commit_with_home, provider, sandbox_id, name, limit, step)
    return f"hal9999:{name}"


async def undo(provider: DockerProvider, step: str) -> None:
    """Remove what the snapshot step of a killed hal left (its note no process holds): its
    staging container and its untagged commit; a snapshot it finished (tagged) stays."""
    docker = docker_sdk()

    with unfinished.taken(provider.state_dir, step) as note:
        if note is None:
            return
        api = provider.client().api
        mine = {"label": f"{STEP_LABEL}={step}"}
        for found in await provider.call("list", api.containers, all=True, filters=mine):
            with contextlib.suppress(docker.errors.NotFound):
                await provider.call("remove", api.remove_container, found["Id"], force=True,
                                    v=True)  # fmt: skip
        left = {**mine, "dangling": True}
        for image in await provider.call("list images", api.images, filters=left, quiet=True):
            # Under a finished snapshot's image the commit is its parent: the engine keeps it.
            with contextlib.suppress(docker.errors.NotFound, ProviderError):
                await provider.call("remove image", api.remove_image, image)
        note.done()


def _commit_with_home(
    provider: DockerProvider, sandbox_id: str, name: str, limit: int, step: str
) -> None:
    # The home's archive is the agent's to size: a sparse file takes no disk (the disk
    # watchdog never sees it) but the engine's tar carries every byte of it. Spooled to
    # a file, never held in memory, and refused past the sandbox's disk limit.
    api = provider.client().api
    container = container_name(sandbox_id)
    stream, _ = api.get_archive(container, HOME)
    with tempfile.TemporaryFile(prefix="hal-snapshot-") as home:
        size = 0
        for chunk in stream:
            size += len(chunk)
            if size > limit:
                stream.close()
                raise ProviderError(
                    f"docker: the home of {container} is over {limit >> 20} MiB as an "
                    "archive (sparse files count whole); not snapshotted",
                    hint="remove what the agent left in its home, or snapshot another",
                )
            home.write(chunk)
        home.seek(0)
        base = api.commit(container, pause=True, changes=[f"LABEL {STEP_LABEL}={step}"])["Id"]
        try:
            # A created, never started, writable container takes the home as a layer on top.
            labels = {LABEL: "snapshot", STAGING_LABEL: sandbox_id, STEP_LABEL: step}
            staging = api.create_container(base, ["true"], labels=labels)["Id"]
            try:
                api.put_archive(staging, "/home", home)
                # The step's label ends here: the snapshot, and every fork of it, would carry
                # it on, and the step's undo remove those forks with its staging container.
                done = [f'LABEL {STEP_LABEL}=""']
                api.commit(staging, repository="hal9999", tag=name, changes=done)
            finally:
                api.remove_container(staging, force=True, v=True)
        except Exception:
            # The untagged commit would stay, unnamed, until someone prunes the engine. (When
            # the staging container would not go either, both go with the sandbox.)
            with contextlib.suppress(*engine_errors()):
                api.remove_image(base)
            raise


async def fork(
    provider: DockerProvider, image: str, count: int, spec: SandboxSpec
) -> list[DockerSandbox]:
    """``count`` new sandboxes of ``spec`` from snapshot ``image``, made concurrently."""
    return await fork_all(provider.create, provider.destroy, image, count, spec)
