"""The ``ssh`` provider: sandboxes on hosts reached over SSH.

Hosts come from ``[[providers.ssh.hosts]]`` (or are handed over by another provider, such
as ``lima``). Each sandbox is a mirror directory on its host (``~/.hal9999/sandboxes/<id>``)
holding the workspace, the binds, a home and a /tmp; the session itself stays on the hal
host, pushed out at creation (and when a warm sandbox is handed a task) and pulled back
after every command, at checkpoints of a running agent, and at stop. Commands run over
one connection per host (:mod:`.connections`), by default inside bubblewrap there.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from pathlib import Path

from hal9999.errors import (
    CapabilityError,
    HalError,
    HostUnreachable,
    ProviderError,
    SandboxNotFound,
)
from hal9999.providers.base import Capabilities, SandboxInfo, doctor_in
from hal9999.providers.bwrap import seccomp
from hal9999.providers.host.exec import MARKER_VAR
from hal9999.providers.host.sandbox import check_spec
from hal9999.providers.remote.files import HOME
from hal9999.providers.ssh import channel, remote
from hal9999.providers.ssh.config import SshConfig, SshHost
from hal9999.providers.ssh.connections import ConnectionPool, load_asyncssh
from hal9999.providers.ssh.records import MountRecord, SshRecord, SshRecords
from hal9999.providers.ssh.sandbox import WORKDIR, SshSandbox
from hal9999.spec import SandboxSpec

logger = logging.getLogger(__name__)
ISOLATION = {"bwrap": "namespace", "disposable": "vm", "none": "none"}


class SshProvider:
    """Sandboxes on ssh hosts, placed in order up to each host's capacity."""

    name = "ssh"
    capabilities = Capabilities(isolation="namespace", host_launch=True)
    config_model = SshConfig

    doctor = doctor_in("hal9999.providers.ssh.doctor")
    """Each configured host: reachable, isolated as configured, its sandboxes."""

    def __init__(self, *, state_dir: Path, config: SshConfig | None = None) -> None:
        self.config = config or SshConfig()
        self.records = SshRecords(state_dir)
        self.pool = ConnectionPool(
            timeout=self.config.connect_timeout_s, keepalive=self.config.keepalive_s
        )
        # Without bwrap nothing takes the network away from a command: only "host" is honest.
        bwrap = self.config.isolation == "bwrap"
        self.capabilities = Capabilities(
            isolation=ISOLATION[self.config.isolation],  # type: ignore[arg-type]
            network_modes=frozenset({"none", "host"} if bwrap else {"host"}),
            host_launch=True,
        )

    def hosts(self) -> tuple[SshHost, ...]:
        """The hosts sandboxes may go to."""
        return self.config.hosts

    def placement(self) -> list[dict[str, object]]:
        """Per host: where it is, its capacity and the sandboxes on it now (from the
        records; no connection is made). For ``hal pool status``."""
        used: dict[str, int] = {}
        hosts = {host.name: host for host in self.hosts()}
        for record in self.records.all():
            used[record.host.name] = used.get(record.host.name, 0) + 1
            hosts.setdefault(record.host.name, record.host)
        return [
            {"host": host.name, "address": f"{host.user}@{host.address}:{host.port}",
             "capacity": host.capacity, "sandboxes": used.get(host.name, 0)}
            for host in hosts.values()
        ]  # fmt: skip

    async def acquire_host(self, sandbox_id: str, spec: SandboxSpec) -> SshHost:
        """The host the new sandbox goes to (a subclass may create one, as ``lima`` does)."""
        return self._place()

    async def release_host(self, host: SshHost) -> None:
        """Called once a sandbox is destroyed (``lima`` deletes its VM here)."""

    def _place(self, skip: frozenset[str] = frozenset()) -> SshHost:
        used: dict[str, int] = {}
        for record in self.records.all():
            used[record.host.name] = used.get(record.host.name, 0) + 1
        for host in self.hosts():
            if host.name not in skip and used.get(host.name, 0) < host.capacity:
                return host
        if not self.hosts():
            raise ProviderError(
                f"provider {self.name!r} has no hosts",
                hint="add [[providers.ssh.hosts]] entries (address, user, key_file, host_key)",
            )
        raise ProviderError(f"every {self.name} host is at its capacity", hint="raise capacity")

    async def create(self, spec: SandboxSpec) -> SshSandbox:
        """Make the mirror on a host with room and push the session's directories out."""
        check_spec(self.name, self.capabilities, spec)
        load_asyncssh()
        sandbox_id = secrets.token_hex(6)
        unreachable: set[str] = set()
        while True:
            # After an unreachable host only the configured ones are tried (a provider
            # that makes its hosts has none configured, so it never gets here).
            skip = frozenset(unreachable)
            host = self._place(skip) if skip else await self.acquire_host(sandbox_id, spec)
            try:
                return await self._create_on(host, sandbox_id, spec)
            except HostUnreachable as exc:
                # A host that is down (or lost) does not stop the task: the session is on
                # the hal host, so any other host with room can carry it (a resume too).
                await self._undo(host, sandbox_id)
                unreachable.add(host.name)
                logger.warning("ssh host %s skipped: %s", host.name, exc.one_line())
                if not self._has_room(frozenset(unreachable)):
                    raise
            except BaseException:
                await self._undo(host, sandbox_id)
                raise

    def _has_room(self, skip: frozenset[str]) -> bool:
        try:
            self._place(skip)
        except ProviderError:
            return False
        return True

    async def _undo(self, host: SshHost, sandbox_id: str) -> None:
        # Whatever was made goes: the mirror and record, and the host when it was made for
        # this sandbox (a lima VM).
        if self.records.path(sandbox_id).exists():
            await self.destroy(sandbox_id)
        else:
            await self.release_host(host)

    async def _create_on(self, host: SshHost, sandbox_id: str, spec: SandboxSpec) -> SshSandbox:
        conn = await self.pool.get(host)
        probe = remote.plain(["sh", "-c", remote.HOST_FACTS, "hal-facts", self.config.bwrap])
        code, out, err = await channel.run(conn, probe, what="reading HOME")
        facts = remote.host_facts(out)
        home = facts.home
        if code != 0 or not home.startswith("/"):
            raise ProviderError(f"ssh host {host.name!r} has no usable HOME: {err.decode()}")
        self._check_host(host, facts, spec)
        root = f"{home}/{self.config.remote_dir}/sandboxes/{sandbox_id}"
        mounts = mount_records(spec, root)
        dirs = [m.remote for m in mounts]
        record = SshRecord(
            id=sandbox_id, provider=self.name, state="running", spec=spec,
            created_at=time.time(), host=host, root=root, mounts=mounts,
            isolation=self.config.isolation, bwrap=self.config.bwrap,
            checkpoint_s=self.config.checkpoint_s, reaper="python3" in facts.has,
            seccomp=True, user_ids=None if facts.uid is None else (facts.uid, facts.gid or 0),
        )  # fmt: skip
        # Recorded before anything is made on the host: hal killed after the mkdir leaves a
        # record the next daemon's sweep destroys, never a mirror nothing knows of.
        self.records.save(record)
        # The filter goes in with the directories: a command never finds the one without
        # the other (bwrap would not start without it).
        filter_text = base64.b64encode(seccomp.build()).decode()
        make = ["sh", "-c", remote.MAKE_ROOT, filter_text, root, *dirs]
        code, _, err = await channel.run(conn, remote.plain(make), what="mkdir")
        if code != 0:
            raise ProviderError(f"cannot create {root} on {host.name!r}: {err.decode()}")
        sandbox = self._handle(record)
        await sandbox.push()
        return sandbox

    def _check_host(self, host: SshHost, facts: remote.HostFacts, spec: SandboxSpec) -> None:
        """Refuse, in one line, a host where the sandbox would not have a local bwrap
        sandbox's boundary (:meth:`remote.HostFacts.bwrap_refused`: a root login above
        all), or lacks what ``network = "host"``'s own namespace needs."""
        if self.config.isolation != "bwrap":
            return
        refused = facts.bwrap_refused(self.config.bwrap)
        if refused is not None:
            raise ProviderError(f"ssh host {host.name!r} {refused[0]}", hint=refused[1])
        missing = facts.network_host_missing() if spec.network == "host" else None
        if missing is not None:
            raise CapabilityError(
                f'network "host" needs {missing} on ssh host {host.name!r}, for the '
                "sandbox's own network namespace (it never shares the host's)",
                hint='install it there (slirp4netns, util-linux), or use network "none"',
            )

    def _handle(self, record: SshRecord) -> SshSandbox:
        return SshSandbox(record, self.pool, self.records, self.destroy)

    async def get(self, sandbox_id: str) -> SshSandbox:
        """A handle on an existing sandbox."""
        return self._handle(self.records.load(sandbox_id))

    async def list(self) -> list[SandboxInfo]:
        """Every sandbox this provider knows of."""
        return [record.info() for record in self.records.all()]

    async def stop(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox on its host, then bring its files back."""
        record = self.records.load(sandbox_id)
        self.records.save(record.model_copy(update={"state": "stopped"}))
        conn = await self.pool.get(record.host)
        await channel.kill_marked(conn, MARKER_VAR, sandbox_id)
        try:
            await self._handle(record).pull()
        except HalError as exc:
            # Stopped all the same; the hal host keeps what the last pull brought.
            logger.warning("sandbox %s stopped, its files not brought back: %s", sandbox_id,
                           exc.one_line())  # fmt: skip

    async def start(self, sandbox_id: str) -> SshSandbox:
        """Commands may run again (the mirror is as it was)."""
        record = self.records.load(sandbox_id).model_copy(update={"state": "running"})
        self.records.save(record)
        return self._handle(record)

    async def attach_workspace(self, sandbox_id: str, spec: SandboxSpec) -> None:
        """A warm sandbox is handed a task: push that task's directories out (the record's
        host paths are the pool slot's links, which now point at the task's session)."""
        await self._handle(self.records.load(sandbox_id)).push()

    def attaches_workspaces(self) -> bool:
        """Pushing is how a sandbox gets its task's files, so warm ones can be handed over."""
        return True

    def resets_safely(self) -> bool:
        """With bwrap the agent reached only the mirror's directories, which :meth:`reset`
        replaces; on a bare host it may have changed anything, so those are destroyed."""
        return self.config.isolation == "bwrap"

    async def reset(self, sandbox_id: str) -> SshSandbox:
        """Nothing of the sandbox running, its own directories (home, /tmp) empty again,
        verified; the workspace and binds come with the next task's push."""
        record = self.records.load(sandbox_id)
        if record.isolation != "bwrap":
            raise ProviderError(f"sandbox {sandbox_id} runs bare on its host: not reset",
                                hint="its pool destroys it instead")  # fmt: skip
        conn = await self.pool.get(record.host)
        if not await channel.kill_marked(conn, MARKER_VAR, sandbox_id):
            raise ProviderError(f"processes of sandbox {sandbox_id} survived the reset")
        own = [mount.remote for mount in record.mounts if mount.host is None]
        code, _, err = await channel.run(
            conn, remote.plain(["sh", "-c", remote.RESET, "hal-reset", *own]), what="reset"
        )
        if code != 0:
            raise ProviderError(f"cannot reset sandbox {sandbox_id}: {err.decode()[-300:]}")
        record = record.model_copy(update={"state": "running"})
        self.records.save(record)
        return self._handle(record)

    async def destroy(self, sandbox_id: str) -> None:
        """Kill its processes and delete the mirror on the host; never the session."""
        try:
            record = self.records.load(sandbox_id)
        except SandboxNotFound:
            return
        await destroy_record(self.records, self.pool, sandbox_id)
        await self.release_host(record.host)


async def destroy_record(records: SshRecords, pool: ConnectionPool, sandbox_id: str) -> None:
    """Destroy one sandbox (idempotent). An unreachable host leaves its mirror behind, with
    a warning: the record goes regardless, so a lost host does not block hal."""
    try:
        record = records.load(sandbox_id)
    except SandboxNotFound:
        return
    try:
        conn = await pool.get(record.host)
        await channel.kill_marked(conn, MARKER_VAR, sandbox_id)
        await channel.run(conn, remote.plain(["sh", "-c", remote.REMOVE, "hal-rm", record.root]),
                          what="rm")  # fmt: skip
    except HalError as exc:
        logger.warning("sandbox %s: %s left on %s: %s", sandbox_id, record.root,
                       record.host.name, exc.one_line())  # fmt: skip
    records.delete(sandbox_id)


def mount_records(spec: SandboxSpec, root: str) -> tuple[MountRecord, ...]:
    """A sandbox's directories in a mirror under ``root`` (``ws``, ``b<N>``, ``home``, ``tmp``)."""
    mounts = []
    if spec.workspace is not None:
        mounts.append(MountRecord(target=WORKDIR, remote=f"{root}/ws", writable=True,
                                  host=spec.workspace))  # fmt: skip
    for index, bind in enumerate(spec.binds):
        mounts.append(MountRecord(target=bind.target, remote=f"{root}/b{index}",
                                  writable=not bind.read_only, host=bind.source))  # fmt: skip
    targets = {m.target for m in mounts}
    if WORKDIR not in targets:
        mounts.append(MountRecord(target=WORKDIR, remote=f"{root}/ws", writable=True))
    if HOME not in targets:
        mounts.append(MountRecord(target=HOME, remote=f"{root}/home", writable=True))
    mounts.append(MountRecord(target="/tmp", remote=f"{root}/tmp", writable=True))
    return tuple(mounts)
