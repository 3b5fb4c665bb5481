"""The ``docker`` provider: sandboxes as containers, through the Docker Engine API.

Works with Docker and with Podman's Docker-compatible service (``podman system service``).
A sandbox is a container ``hal-<id>`` from a hal image (``hal image container`` imports one
from the debootstrap rootfs; no registry), kept alive by ``tini -s -- sleep infinity``:

- the session's workspace bound at ``/workspace`` and the spec's binds at their targets;
- a read-only root; ``/tmp`` and ``/home/hal`` are volumes of the container (kept across
  stop and start, removed with it);
- no network (``network_mode=none``); the gateway issue's unix socket reaches the sandbox as
  an ordinary bind of its host path, which needs no network;
- every capability dropped, ``no-new-privileges``, and bwrap's seccomp stance
  (:mod:`.seccomp`: keyrings, bpf, mount, modules, nested user namespaces...);
- a uid of its own (from hal's reserved range when hal runs as root, else hal's own uid),
  never root, never a login user's uid, for every command; the init and its ``sleep`` run
  as uid 0 with no capability, so the agent's uid can neither trace nor signal them (the
  init outlives tasks in a warm container) and ``/etc/passwd`` and ``/etc/group`` are
  hal's, naming the sandbox's uid ``hal`` (the engine names only the container's user);
- memory (swap included), pids and CPU limits, the defaults of :mod:`providers.limits` for
  whatever the spec leaves unset.

The provider's records are the containers themselves (labels carry the spec), so a second
``hal`` process sees the same sandboxes; ``state_dir`` scopes them (one label per state dir).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from hal9999 import fs
from hal9999.errors import (
    CapabilityError,
    ConfigError,
    ProviderError,
    SandboxNotFound,
)
from hal9999.providers import limits, unfinished
from hal9999.providers.base import Capabilities, SandboxInfo, SandboxState, doctor_in
from hal9999.providers.docker import seccomp as dockerseccomp
from hal9999.providers.docker.engine import docker_sdk, engine_call, engine_client, host_cli
from hal9999.providers.docker.sandbox import WORKDIR, DockerSandbox
from hal9999.providers.host import user as sandboxuser
from hal9999.spec import SandboxSpec

DEFAULT_URL = "unix:///var/run/docker.sock"
LABEL = "hal9999.sandbox"
"""Label holding the sandbox id; its presence marks hal's containers."""
SCOPE_LABEL = "hal9999.scope"
SPEC_LABEL = "hal9999.spec"
UID_LABEL = "hal9999.uid"
CREATED_LABEL = "hal9999.created"
STAGING_LABEL = "hal9999.snapshot-of"
"""On the staging container of a snapshot: the sandbox it snapshots (removed with it, so a
hal killed mid-snapshot leaves no container nothing removes)."""
ID_PATTERN = re.compile(r"[0-9a-f]{12}")
ALLOCATING = "allocating"
"""A create's note (:mod:`providers.unfinished`) before its uid is allocated."""
HOME = "/home/hal"
VOLUMES = ("/tmp", HOME)
"""Writable places besides the binds: container volumes, so they survive stop and start."""
INIT_USER = "0:0"
"""The init's and its ``sleep``'s user: root with no capability (and ``no-new-privileges``),
as bwrap's reaper. Not the sandbox's uid: ptrace (and ``/proc/<pid>/mem``) needs the same uid
or ``CAP_SYS_PTRACE``, so an agent cannot plant code in a process that outlives its task."""


class DockerConfig(BaseModel):
    """Settings of the ``docker`` provider (``[providers.docker]``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["docker"] = "docker"
    """Provider kind."""
    url: str | None = None
    """Engine API address; ``HAL_DOCKER_URL``, then ``DOCKER_HOST``, then Docker's socket."""
    image: str = "hal9999:default"
    """Image for specs that name none (``hal image container`` builds ``hal9999:default``)."""
    init: tuple[str, ...] = ("tini", "-s", "--")
    """PID 1 of every container (uid 0, no capability), reaping orphans; ``sleep infinity``
    runs under it."""
    cli: str | None = None
    """Host CLI for launch and attach (``podman`` or ``docker``); the first found when unset."""

    def engine_url(self) -> str:
        """Where the engine API listens."""
        return self.engine_address()[0]

    def engine_address(self) -> tuple[str, str]:
        """Where the engine API listens, and what set it (for an error naming it)."""
        if self.url:
            return self.url, "[providers.docker] url"
        for var in ("HAL_DOCKER_URL", "DOCKER_HOST"):
            if os.environ.get(var):
                return os.environ[var], var
        return DEFAULT_URL, "the default engine address"


class DockerProvider:
    """Containers on a Docker or Podman engine."""

    name = "docker"
    capabilities = Capabilities(
        isolation="namespace",
        network_modes=frozenset({"none"}),
        resource_limits=True,
        host_launch=True,
        snapshot=True,
    )
    config_model = DockerConfig

    doctor = doctor_in("hal9999.providers.docker.doctor")
    """The SDK, the engine, the image, the sandboxes."""

    def __init__(self, *, state_dir: Path, config: DockerConfig | None = None) -> None:
        self.state_dir = state_dir
        self.config = config or DockerConfig()
        self.url, self.url_source = self.config.engine_address()
        self.scope = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
        self._client: Any = None
        self._podman: bool | None = None

    # -- engine -------------------------------------------------------------------------
    def client(self) -> Any:
        """The SDK client, made on first use (a missing SDK is reported here)."""
        if self._client is None:
            self._client = engine_client(self.url, self.url_source)
        return self._client

    async def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking SDK call in a thread, its errors mapped to hal's."""
        return await engine_call(self.url, what, fn, *args, **kwargs)

    def cli_argv(self) -> list[str]:
        """The host CLI and its engine address, absolute (launch runs with a bare env)."""
        return host_cli(self.config.cli, self.url)

    # -- lifecycle ----------------------------------------------------------------------
    def check(self, spec: SandboxSpec) -> None:
        """Refuse what containers here cannot do."""
        if spec.network != "none":
            raise CapabilityError(
                f"docker sandboxes have no network (asked for {spec.network!r})",
                hint='use network "none"; LLM traffic goes through the gateway socket',
            )
        for bind in spec.binds:
            if not bind.target.startswith("/") or bind.target.rstrip("/") in ("", WORKDIR):
                raise ConfigError(f"bind target {bind.target!r} is not allowed here")

    async def create(self, spec: SandboxSpec) -> DockerSandbox:
        """Create and start a container for ``spec``."""
        self.check(spec)
        docker_sdk()  # without the SDK, said before anything is recorded
        await self._undo_abandoned()
        sandbox_id = secrets.token_hex(6)
        privileged = sandboxuser.privileged()
        first = ALLOCATING if privileged else ""
        try:
            with unfinished.noted(self.state_dir, sandbox_id, first) as note:
                uid = os.geteuid()
                if privileged:
                    uid = sandboxuser.allocate(f"docker {sandbox_id}")
                    note.record(str(uid))
                await self._make_container(sandbox_id, spec, uid)
        except BaseException:
            await self._undo(sandbox_id)
            raise
        return await self.get(sandbox_id)

    async def _make_container(self, sandbox_id: str, spec: SandboxSpec, uid: int) -> None:
        Mount = docker_sdk().types.Mount  # the SDK's class

        if sandboxuser.privileged():
            writable = [spec.workspace] if spec.workspace else []
            writable += [b.source for b in spec.binds if not b.read_only]
            for source in writable:
                await asyncio.to_thread(sandboxuser.adopt, source, uid)
        mounts = []
        if spec.workspace is not None:
            mounts.append(Mount(WORKDIR, str(spec.workspace), type="bind"))
        else:
            mounts.append(Mount(WORKDIR, None, type="volume"))
        bound = {b.target.rstrip("/") for b in spec.binds}
        mounts += [Mount(target, None, type="volume") for target in VOLUMES if target not in bound]
        mounts += [
            Mount(b.target, str(b.source), type="bind", read_only=b.read_only) for b in spec.binds
        ]
        for name, text in sandboxuser.accounts(uid, uid).items():
            if f"/etc/{name}" not in bound:
                source = self._state_file(name, text)
                mounts.append(Mount(f"/etc/{name}", str(source), type="bind", read_only=True))
        res = limits.effective(spec.resources)
        memory = f"{res.memory_mb}m" if res.memory_mb else None
        # HAL_SANDBOX goes with each command, not PID 1: a sandbox at rest runs nothing marked.
        env = {"HOME": HOME, "LANG": "C.UTF-8", "PATH": PATH, **spec.env}
        labels = {
            LABEL: sandbox_id,
            SCOPE_LABEL: self.scope,
            SPEC_LABEL: spec.model_dump_json(),
            UID_LABEL: str(uid),
            CREATED_LABEL: str(time.time()),
        }
        client = self.client()
        image = spec.image or self.config.image
        await self._check_image(image)
        container = await self.call(
            "create", client.containers.create, image, ["sleep", "infinity"],
            entrypoint=list(self.config.init), name=container_name(sandbox_id),
            hostname=f"hal-{sandbox_id}", user=INIT_USER, working_dir=WORKDIR,
            environment=env, labels=labels, mounts=mounts, read_only=True,
            network_mode="none", cap_drop=["ALL"],
            security_opt=["no-new-privileges", f"seccomp={await self._seccomp()}"],
            mem_limit=memory, memswap_limit=memory, pids_limit=res.pids or -1,
            nano_cpus=int(res.cpus * 1e9) if res.cpus else None, stop_signal="SIGKILL",
            ulimits=_file_size_limit(res.disk_mb),
        )  # fmt: skip
        await self.call("start", container.start)
        await self._adopt_home(container.id, uid)

    async def _adopt_home(self, container: str, uid: int) -> None:
        """Hand the home volume's contents to the sandbox's uid: a fork's home came from a
        snapshot of another sandbox, whose uid owns it. Possible where the engine's volumes
        are on this host and hal is root (local Docker or Podman); elsewhere a fork's home
        stays readable but not writable by its new user."""
        if not sandboxuser.privileged():
            return
        found = await self.call("inspect", self.client().api.inspect_container, container)
        for mount in found.get("Mounts") or []:
            source = Path(str(mount.get("Source") or ""))
            if mount.get("Destination") == HOME and mount.get("Type") == "volume":
                if source.is_absolute() and source.is_dir():
                    await asyncio.to_thread(sandboxuser.adopt, source, uid)

    async def _seccomp(self) -> str:
        """The profile as the engine takes it: Docker wants the JSON itself, Podman's service
        a file on its host (written under the state dir; a remote Podman needs one there)."""
        if self._podman is None:
            version = await self.call("version", self.client().version)
            names = [c.get("Name", "") for c in version.get("Components") or []]
            self._podman = any("podman" in name.lower() for name in names)
        if not self._podman:
            return dockerseccomp.profile()
        return str(self._state_file("seccomp", dockerseccomp.profile(), ".json"))

    def _state_path(self, kind: str, text: str, suffix: str = "") -> Path:
        """Where :meth:`_state_file` keeps ``text``: named by its contents."""
        return self.state_dir / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:12]}{suffix}"

    def _state_file(self, kind: str, text: str, suffix: str = "") -> Path:
        """A file of the engine's host holding ``text``, named by its contents under the
        state dir: made once by rename, never written in place (a container may bind it)."""
        path = self._state_path(kind, text, suffix)
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fs.write_text(path, text, mode=0o644, durable=False)
        return path

    async def _check_image(self, image: str) -> None:
        docker = docker_sdk()

        try:
            await self.call("image lookup", self.client().images.get, image)
        except docker.errors.NotFound as exc:
            raise ConfigError(
                f"container image {image!r} is not in the engine at {self.url}",
                hint="build it with `sudo hal image container` (or name another image)",
            ) from exc

    async def _inspect(self, sandbox_id: str) -> dict[str, Any]:
        docker = docker_sdk()

        if not ID_PATTERN.fullmatch(sandbox_id):
            raise SandboxNotFound(f"no docker sandbox {sandbox_id!r}")
        try:
            found = await self.call(
                "inspect", self.client().api.inspect_container, container_name(sandbox_id)
            )
        except docker.errors.NotFound as exc:
            raise SandboxNotFound(f"no docker sandbox {sandbox_id!r}") from exc
        labels = found.get("Config", {}).get("Labels") or {}
        if labels.get(SCOPE_LABEL) != self.scope or labels.get(LABEL) != sandbox_id:
            raise SandboxNotFound(f"no docker sandbox {sandbox_id!r} here")
        return dict(found)

    def _handle(self, found: Mapping[str, Any]) -> DockerSandbox:
        labels = found["Config"]["Labels"]
        spec = SandboxSpec.model_validate_json(labels[SPEC_LABEL])
        running = bool(found.get("State", {}).get("Running"))
        return DockerSandbox(self, labels[LABEL], spec, int(labels[UID_LABEL]), running)

    async def get(self, sandbox_id: str) -> DockerSandbox:
        """A handle on an existing sandbox."""
        return self._handle(await self._inspect(sandbox_id))

    async def list(self) -> builtins.list[SandboxInfo]:
        """This state dir's sandboxes, oldest first, once what killed hals left half made is
        undone (the daemon's recovery lists them at start-up)."""
        await self._undo_abandoned()
        client = self.client()
        scope = {"label": f"{SCOPE_LABEL}={self.scope}"}
        containers = await self.call("list", client.api.containers, all=True, filters=scope)
        out = []
        for summary in containers:
            labels = summary.get("Labels") or {}
            state: SandboxState = "running" if summary.get("State") == "running" else "stopped"
            out.append(
                SandboxInfo(
                    id=labels[LABEL],
                    provider=self.name,
                    state=state,
                    spec=SandboxSpec.model_validate_json(labels[SPEC_LABEL]),
                    created_at=float(labels.get(CREATED_LABEL, 0)),
                )
            )
        return sorted(out, key=lambda info: info.created_at)

    async def stop(self, sandbox_id: str) -> None:
        """Kill every process of the container; volumes and binds stay. A container that
        stopped already (its agent killed its init) is left as it is."""
        found = await self._inspect(sandbox_id)
        if not found.get("State", {}).get("Running"):
            return
        await self.call("stop", self.client().api.kill, container_name(sandbox_id))
        await self.call("wait", self.client().api.wait, container_name(sandbox_id))

    async def start(self, sandbox_id: str) -> DockerSandbox:
        """Start a stopped container (its binds are resolved again)."""
        found = await self._inspect(sandbox_id)
        if not found.get("State", {}).get("Running"):
            await self.call("start", self.client().api.start, container_name(sandbox_id))
        return await self.get(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        """Remove the container and its volumes; binds are untouched. Idempotent."""
        try:
            found = await self._inspect(sandbox_id)
        except SandboxNotFound:
            return
        await self._remove(sandbox_id)
        self._release(int(found["Config"]["Labels"].get(UID_LABEL, -1)))

    def _release(self, uid: int) -> None:
        """Give a gone sandbox's uid back, and its account files with it when the uid was
        its own (a root hal); an ordinary hal's sandboxes all share its uid's files."""
        if sandboxuser.privileged():
            for name, text in sandboxuser.accounts(uid, uid).items():
                self._state_path(name, text).unlink(missing_ok=True)
        sandboxuser.release(uid)

    async def _undo(self, sandbox_id: str) -> None:
        """Undo a create or reset of ``sandbox_id`` that failed, or whose hal was killed (its
        note in the state dir, see :mod:`providers.unfinished`): the container, whole or
        half made, goes and the uid is given back. Nothing when another process holds the
        note (its step still runs) or none is left."""
        with unfinished.taken(self.state_dir, sandbox_id) as note:
            if note is None:
                return
            await self._remove(sandbox_id)
            text = note.text()
            if text.isascii() and text.isdigit():
                self._release(int(text))
            elif sandboxuser.privileged():
                # ALLOCATING (killed inside allocate's window), or empty (killed between the
                # note's truncate and its write of the uid), or garbled: found by its owner.
                for uid in sandboxuser.held_by(f"docker {sandbox_id}"):
                    self._release(uid)
            note.done()

    async def _undo_abandoned(self) -> None:
        """Undo what killed hals left of their creates, resets (see :meth:`_undo`) and
        snapshots (:func:`.snap.undo`)."""
        for name in unfinished.pending(self.state_dir):
            if ID_PATTERN.fullmatch(name):
                await self._undo(name)
            elif name.startswith("snapshot-"):
                from hal9999.providers.docker import snap as dockersnap

                if dockersnap.STEP_PATTERN.fullmatch(name):
                    await dockersnap.undo(self, name)

    async def _remove(self, sandbox_id: str) -> None:
        docker = docker_sdk()

        try:
            await self.call(
                "remove", self.client().api.remove_container, container_name(sandbox_id),
                v=True, force=True,
            )  # fmt: skip
        except docker.errors.NotFound:
            pass
        # A snapshot's staging container that a killed hal left (see snap),
        # then the untagged commit under it (kept when a finished snapshot's image is on it).
        api = self.client().api
        staged = {"label": f"{STAGING_LABEL}={sandbox_id}"}
        for found in await self.call("list", api.containers, all=True, filters=staged):
            with contextlib.suppress(docker.errors.NotFound):
                await self.call("remove", api.remove_container, found["Id"], v=True, force=True)
            with contextlib.suppress(docker.errors.NotFound, ProviderError):
                await self.call("remove image", api.remove_image, found["ImageID"])

    # -- pool ---------------------------------------------------------------------------
    async def attach_workspace(self, sandbox_id: str, spec: SandboxSpec) -> None:
        """Give a pooled sandbox ``spec``'s workspace: a restart re-resolves its bind sources
        (the pool's slot links now point at the new task's directories)."""
        found = await self._inspect(sandbox_id)
        uid = int(found["Config"]["Labels"][UID_LABEL])
        if sandboxuser.privileged():
            writable = [spec.workspace] if spec.workspace else []
            writable += [b.source for b in spec.binds if not b.read_only]
            for source in writable:
                await asyncio.to_thread(sandboxuser.adopt, source, uid)
        name = container_name(sandbox_id)
        await self.call("restart", self.client().api.restart, name, timeout=0)

    def attaches_workspaces(self) -> bool:
        """Always: binds are resolved when the container starts."""
        return True

    async def reset(self, sandbox_id: str) -> DockerSandbox:
        """A new container from the image under the same id and uid: fresh root, volumes and
        processes, so nothing a task left inside survives. One that fails (or whose hal is
        killed) midway leaves no sandbox: its container and uid go."""
        found = await self._inspect(sandbox_id)
        labels = found["Config"]["Labels"]
        spec = SandboxSpec.model_validate_json(labels[SPEC_LABEL])
        uid = int(labels[UID_LABEL])
        try:
            with unfinished.noted(self.state_dir, sandbox_id, str(uid)):
                await self._remove(sandbox_id)
                await self._make_container(sandbox_id, spec, uid)
        except BaseException:
            await self._undo(sandbox_id)
            raise
        return await self.get(sandbox_id)

    def resets_safely(self) -> bool:
        """True: a reset replaces the container whole (see :meth:`reset`)."""
        return True

    # -- snapshots (snap) -----------------------------------------------
    async def snapshot(self, sandbox_id: str, name: str | None = None) -> str:
        """Save the sandbox as image ``hal9999:<name>``: its filesystem and its home."""
        from hal9999.providers.docker import snap as dockersnap

        return await dockersnap.snapshot(self, sandbox_id, name)

    async def fork(self, image: str, count: int, spec: SandboxSpec) -> builtins.list[DockerSandbox]:
        """``count`` new sandboxes of ``spec`` from snapshot ``image``, made concurrently."""
        from hal9999.providers.docker import snap as dockersnap

        return await dockersnap.fork(self, image, count, spec)


PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def container_name(sandbox_id: str) -> str:
    """The engine's name for a sandbox's container."""
    return f"hal-{sandbox_id}"


def _file_size_limit(disk_mb: int | None) -> list[Any] | None:
    """No single file beyond the disk limit (RLIMIT_FSIZE, as bwrap's prlimit; the total is
    watched by :meth:`DockerSandbox.disk_use`): overlay quotas need xfs, rarely there.
    Podman drops its configured ``default_ulimits`` once any is given and then asks for a
    ``nofile`` beyond what its service may grant, so those of scripts/setup-podman.sh go too."""
    if not disk_mb:
        return None
    Ulimit = docker_sdk().types.Ulimit  # the SDK's class

    return [
        Ulimit(name="fsize", soft=disk_mb << 20, hard=disk_mb << 20),
        Ulimit(name="nofile", soft=4096, hard=4096),
        Ulimit(name="nproc", soft=4096, hard=4096),
    ]
