"""What the host-side providers (local, bwrap, fake) share: the handle and the lifecycle
(records and the spec check: :mod:`.records`).

Each sandbox is a directory ``<state_dir>/<id>/`` holding ``sandbox.json`` (id, state,
spec, created_at, cgroup), so any later ``hal`` process can get, list, stop or destroy a
sandbox an earlier one created. Processes are tracked by a per-sandbox cgroup where the
host allows one, otherwise by the ``HAL_SANDBOX`` marker in their environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel

from hal9999.errors import CapabilityError, ExecError, ProviderError, SandboxNotFound
from hal9999.hostread import read_all
from hal9999.providers import limits
from hal9999.providers.base import (
    STDOUT_LIMIT,
    Capabilities,
    Command,
    ExecResult,
    Launch,
    SandboxInfo,
    SandboxState,
    StreamEvent,
)
from hal9999.providers.handle import SandboxHandle, reading_file
from hal9999.providers.host import cgroups, scratch
from hal9999.providers.host import exec as hostexec
from hal9999.providers.host import fs as hostfs
from hal9999.providers.host import user as sandboxuser
from hal9999.providers.host.records import RecordStore as RecordStore
from hal9999.providers.host.records import SandboxRecord as SandboxRecord
from hal9999.providers.host.records import check_spec as check_spec
from hal9999.spec import ArgvCommand, Resources, SandboxSpec, display

STATES = frozenset(get_args(SandboxState))
"""Every state a record can hold."""


class HostSandbox(SandboxHandle):
    """A sandbox handle whose files map onto host directories (see :mod:`.fs`).

    File operations on mapped paths run on the host. Paths no mount covers, or whose
    symlinks lead out of their mount, are handled by commands inside the sandbox (``cat``,
    ``test``, ``mkdir``, ``rm``, a ``sh`` script for writes), so they mean what they mean
    there; a failure is an :class:`ExecError`. Writes to read-only binds are refused.
    """

    home: str
    """HOME of commands inside."""

    def __init__(self, owner: HostProvider, record: SandboxRecord, paths: hostfs.PathMap) -> None:
        self._owner = owner
        self._record = record
        self._paths = paths
        self._record_file = str(owner.store.path(record.id))

    def _identity(self) -> tuple[str, str, SandboxSpec]:
        return self._record.id, self._owner.name, self._record.spec

    @property
    def workdir(self) -> str:
        """Where the spec's workspace appears inside the sandbox."""
        return self._paths.cwd

    @property
    def dir(self) -> Path:
        """The sandbox's private state directory on the host."""
        return self._owner.store.dir(self.id)

    def path(self, target: str) -> str:
        """Where the bind ``target`` is seen by commands inside (the same path, here)."""
        return target

    @property
    def uid(self) -> int | None:
        """The host uid its processes run as (None: the user running hal)."""
        return self._record.uid

    async def adopt(self, target: str) -> None:
        """Hand the host-made files under the writable mount at ``target`` to its user."""
        if (adopting := self.adoption((target,))) is not None:
            await asyncio.to_thread(adopting)

    def adoption(self, targets: Sequence[str]) -> Callable[[], None] | None:
        """:meth:`adopt` of ``targets``, one blocking step for the caller's hop."""
        return sandboxuser.adoption(self._paths.writable_roots(targets), self.uid)

    def _own(self, path: str) -> None:
        # What the host just wrote into a writable mount must be the sandbox user's.
        found = self._paths.mount_for(path)
        if self.uid is not None and found is not None and found[0].writable:
            sandboxuser.own_created(found[0].source, found[1], self.uid)

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """A host command line that runs ``command`` inside."""
        raise NotImplementedError

    def attach_command(self) -> list[str]:
        """A host command line that opens an interactive shell inside."""
        raise NotImplementedError

    def base_env(self) -> dict[str, str]:
        """The environment every command starts from; nothing else leaks in from the host."""
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.home, "LANG": "C.UTF-8"}
        if "TERM" in os.environ:
            base["TERM"] = os.environ["TERM"]
        return base

    def command_env(self, command: Command, env: Mapping[str, str] | None) -> dict[str, str]:
        """The exact environment of ``command``: base, spec, command, exec-time."""
        merged = self.base_env() | self.spec.env | command.env | dict(env or {})
        # The launcher sets the marker; a value from the spec must not pretend otherwise.
        merged.pop(hostexec.MARKER_VAR, None)
        return merged

    def _require(self, *, running: bool) -> None:
        # Before every command and file operation: the state alone, from the JSON as it
        # stands (pydantic checking the whole record is dearer); anything but a readable
        # record goes through the full load, which raises what fits.
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            record = json.loads(read_all(self._record_file))
            if record["state"] == "running" or (not running and record["state"] in STATES):
                return
        state = self._owner.store.load(self.id).state
        if running and state != "running":
            raise ExecError(
                f"sandbox {self.id} is {state}", hint="start the sandbox before running commands"
            )

    async def _exec_command(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes | None,
        timeout: float | None,  # noqa: ASYNC109
        stdout_limit: int,
    ) -> ExecResult:  # fmt: skip
        """Run a command to completion; past ``timeout`` it is killed and ExecError raised."""
        self._require(running=True)
        launch = self.launch(command, env=env)
        return await hostexec.run(launch, stdin=stdin, time_limit=timeout, what=display(command),
                                  stdout_limit=stdout_limit)  # fmt: skip

    async def exec_stream(
        self, command: Command, *, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Run a command, yielding output as it comes and the exit status last."""
        self._require(running=True)
        async with contextlib.aclosing(hostexec.stream(self.launch(command, env=env))) as events:
            async for event in events:
                yield event

    async def _inside(
        self, argv: list[str], *, stdin: bytes | None = None, stdout_limit: int = STDOUT_LIMIT
    ) -> ExecResult:
        command = ArgvCommand(argv=tuple(argv), cwd=self.workdir)
        return await self.exec(command, stdin=stdin, stdout_limit=stdout_limit)

    async def read_file(self, path: str) -> bytes:
        """The contents of a file."""
        self._require(running=False)
        where = self._paths.host(path, follow=True)
        if where is None:
            # As much as a read on the host takes (hostfs.READ_LIMIT), no more.
            with reading_file(path, hostfs.READ_LIMIT):
                result = await self._inside(["cat", "--", self._paths.normalize(path)],
                                            stdout_limit=hostfs.READ_LIMIT)  # fmt: skip
            if not result.ok:
                raise ExecError(f"cannot read {path}: {result.stderr.decode().strip()}")
            return result.stdout
        return await asyncio.to_thread(hostfs.read_file, where, path)

    async def write_file_atomic(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write a file atomically (temp + rename), create parents, verify it."""
        self._require(running=False)
        where = self._paths.host(path, follow=False)
        if where is not None:
            await asyncio.to_thread(hostfs.write_file_atomic, where, path, data, mode)
            await asyncio.to_thread(self._own, path)
            return
        # Unmapped: the same steps with the sandbox's own tools; paths travel as arguments.
        script = (
            'set -e; d=$(dirname -- "$1"); mkdir -p -- "$d"; t=$(mktemp "$d/.hal.XXXXXX"); '
            'trap \'rm -f -- "$t"\' EXIT; cat > "$t"; chmod "$2" "$t"; mv -f -- "$t" "$1"'
        )
        target = self._paths.normalize(path)
        result = await self._inside(["sh", "-c", script, "sh", target, f"{mode:o}"], stdin=data)
        if not result.ok:
            raise ExecError(f"cannot write {path}: {result.stderr.decode().strip()}")
        if await self.read_file(target) != data:
            raise ExecError(f"wrote {path} but read back different bytes")

    async def exists(self, path: str) -> bool:
        """Whether the path exists."""
        self._require(running=False)
        where = self._paths.host(path, follow=True)
        if where is None:
            return (await self._inside(["test", "-e", self._paths.normalize(path)])).ok
        return await asyncio.to_thread(hostfs.exists, where)

    async def mkdir(self, path: str, *, mode: int = 0o755) -> None:
        """Create a directory and its parents."""
        self._require(running=False)
        where = self._paths.host(path, follow=True)
        if where is not None:
            await asyncio.to_thread(hostfs.mkdir, where, path, mode)
            await asyncio.to_thread(self._own, path)
            return
        result = await self._inside(["mkdir", "-p", "-m", f"{mode:o}", self._paths.normalize(path)])
        if not result.ok:
            raise ExecError(f"cannot create directory {path}: {result.stderr.decode().strip()}")

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, or a directory tree with ``recursive``."""
        self._require(running=False)
        where = self._paths.host(path, follow=False)
        if where is not None:
            await asyncio.to_thread(hostfs.remove, where, path, recursive)
            return
        flags = "-rf" if recursive else "-f"
        result = await self._inside(["rm", flags, "--", self._paths.normalize(path)])
        if not result.ok:
            raise ExecError(f"cannot remove {path}: {result.stderr.decode().strip()}")

    async def disk_use(self) -> limits.DiskUse:
        """What the sandbox's writable host dirs (workspace, home, scratch, writable binds)
        hold now, against its disk limits."""
        dirs = list(dict.fromkeys(Path(os.path.realpath(m.source)) for m in self._paths.mounts
                                  if m.writable))  # fmt: skip
        return await limits.use_of(dirs, self._owner.resources(self.spec))

    async def _destroy_self(self) -> None:
        await self._owner.destroy(self.id)


class HostProvider:
    """Lifecycle over a :class:`RecordStore`; subclasses add dirs, mounts and launching."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    config_model: ClassVar[type[BaseModel]]

    def __init__(self, *, state_dir: Path, cgroup: Literal["auto", "off"] = "auto") -> None:
        self.state_dir = state_dir
        self.store = RecordStore(state_dir)
        self._cgroup_mode = cgroup
        self._cgroup_host: cgroups.CgroupHost | Literal[False] | None = False
        self._granted = limits.GrantedLimits()
        self._stopped: dict[str, tuple[tuple[int, int, int], SandboxRecord]] = {}
        """Sandboxes this object's :meth:`stop` has emptied, with their record file as that
        stop saved it, and the record it saved (see :meth:`reset`)."""
        self._fresh: dict[str, dict[str, scratch.Stamp | None]] = {}
        """Per sandbox, its own directories as this object's last :meth:`reset` (or
        :meth:`create`) left them, fresh (see :func:`.scratch.untouched`)."""
        self._cgroup_made: dict[str, dict[str, Any]] = {}
        """Sandboxes this object created with a cgroup in their first record, and that cgroup."""

    def _handle(self, record: SandboxRecord) -> HostSandbox:
        raise NotImplementedError

    def new_id(self, spec: SandboxSpec) -> str:
        """The id of a sandbox about to be made for ``spec`` (a subclass may choose it)."""
        return secrets.token_hex(6)

    def cgroup_host(self) -> cgroups.CgroupHost | None:
        """The cgroup hierarchy sandboxes go into (None when off or unavailable)."""
        if self._cgroup_host is False:
            self._cgroup_host = cgroups.detect() if self._cgroup_mode == "auto" else None
        return self._cgroup_host

    def cgroup(self, record: SandboxRecord) -> cgroups.Cgroup | None:
        """The cgroup of the sandbox, if it has one."""
        return self.store.cgroup(record)

    def resources(self, spec: SandboxSpec) -> Resources:
        """The limits a sandbox of ``spec`` gets here: where this provider enforces limits,
        the defaults for what ``spec`` leaves unset, as far as the host allows (a cgroup with
        the controller; the disk limit needs none): :func:`limits.granted`."""
        if not self.capabilities.resource_limits:
            return limits.explicit(spec.resources)
        host = self.cgroup_host()
        return self._granted.get(spec.resources, frozenset() if host is None else host.controllers)

    async def _prepare(self, record: SandboxRecord) -> SandboxRecord:
        """Make the sandbox runnable (dirs, cgroup); also used by start(), so idempotent."""
        wanted = cgroups.CgroupLimits.from_resources(record.spec.resources)
        host = self.cgroup_host()
        if host is None:
            if wanted.controllers():
                off = self._cgroup_mode == "off"
                why = "cgroups are off in its settings" if off else "no writable cgroup here"
                raise CapabilityError(
                    f"provider {self.name!r} cannot enforce resource limits: {why}",
                    hint="run hal as root or in a delegated cgroup, or drop the resource limits",
                )
            return record
        effective = cgroups.CgroupLimits.from_resources(self.resources(record.spec))
        cgroup = host.create(record.id, effective)
        return record.model_copy(update={"cgroup": cgroup.to_record()})

    def _claim_ids(self, record: SandboxRecord) -> SandboxRecord:
        """``record`` with what a new sandbox takes from the host before anything else (a
        uid of its own), recorded with it in the first save so that :meth:`destroy` gives
        it back whatever fails later."""
        return record

    async def _kill(self, record: SandboxRecord) -> None:
        """Kill every process of the sandbox."""
        cgroup = self.cgroup(record)
        if cgroup is not None:
            await cgroup.kill_all()
        if cgroup is None or not self.cgroup_holds_all(record):  # one may be outside it
            await hostexec.kill_marked(record.id)

    def cgroup_holds_all(self, record: SandboxRecord) -> bool:
        """Whether no process of the sandbox can be outside its cgroup (no scan of every host
        process then): made here with it in its first record (so each handle, in any
        hal, joins it before its marker shows in /proc), run as a uid of its own, owning none
        of the cgroup tree (not the same user's: on v2 it can nest a cgroup; not another hal's)."""
        return record.uid is not None and self._cgroup_made.get(record.id, False) == record.cgroup

    async def create(self, spec: SandboxSpec) -> HostSandbox:
        """Create and start a sandbox."""
        check_spec(self.name, self.capabilities, spec)
        sandbox_id = self.new_id(spec)
        self.store.make_dir(sandbox_id)
        record = SandboxRecord(
            id=sandbox_id, provider=self.name, state="running", spec=spec, created_at=time.time()
        )
        try:
            # One save before anything is made, naming all a destroy() must undo (the uid,
            # the cgroup about to be made), and a second only if preparing changed the record:
            # each save is a new file (a new inode is dear on some hosts).
            record = self._claim_ids(record)
            host = self.cgroup_host()
            if host is not None:
                planned = host.cgroup(sandbox_id).to_record()
                record = record.model_copy(update={"cgroup": planned})
                self._cgroup_made[sandbox_id] = planned
            self.store.save(record)
            prepared = await self._prepare(record)
            if prepared != record:
                self.store.save(prepared)
            record = prepared
        except BaseException:
            await self.destroy(sandbox_id)
            raise
        self._remember_fresh(sandbox_id, self._own_dirs(record))
        return self._handle(record)

    async def get(self, sandbox_id: str) -> HostSandbox:
        """A handle on an existing sandbox; :class:`SandboxNotFound` when gone."""
        return self._handle(self.store.load(sandbox_id))

    async def list(self) -> list[SandboxInfo]:
        """Every sandbox this provider knows of."""
        return [record.info() for record in self.store.all()]

    async def stop(self, sandbox_id: str) -> None:
        """Stop every process inside; the sandbox can be started again."""
        record = self.store.current(sandbox_id).model_copy(update={"state": "stopped"})
        self._stopped.pop(sandbox_id, None)
        # First, so no new command starts while we kill; the running record is kept for
        # the start that follows (a pool reset) to take back without writing a new file.
        # Stamped before the kill: a save by anyone during it makes the stamp stale.
        self.store.save(record, keep_previous=True)
        stamp = self.store.stamp(sandbox_id)
        await self._kill(record)
        if stamp is not None:  # else gone meanwhile (a destroy): nothing to skip
            self._stopped[sandbox_id] = (stamp, record)

    def _still_stopped(self, sandbox_id: str) -> SandboxRecord | None:
        """The record, when this object's last :meth:`stop` of the sandbox killed every
        process of it and nobody has saved its record since (no start, by any ``hal``
        process: a command needs the sandbox running, and only a start, which saves the
        record, makes it so); else None. The record that stop saved: not read again."""
        stopped = self._stopped.get(sandbox_id)
        fresh = stopped is not None and stopped[0] == self.store.stamp(sandbox_id)
        return stopped[1] if stopped is not None and fresh else None

    async def start(self, sandbox_id: str) -> HostSandbox:
        """Start a stopped sandbox (re-creating its cgroup if, say, the host rebooted)."""
        return await self._start(self.store.load(sandbox_id))

    async def _start(self, record: SandboxRecord) -> HostSandbox:
        self._stopped.pop(record.id, None)
        record = await self._prepare(record)
        record = record.model_copy(update={"state": "running"})
        self.store.save_kept(record)  # the next stop takes it from there
        return self._handle(record)

    def resets_safely(self) -> bool:
        """Whether :meth:`reset` leaves nothing of a task behind: true where a task can change
        nothing outside its session but the sandbox's own dirs and cgroup (not on the host
        itself, not on a VM's disk or kernel)."""
        return self.capabilities.isolation in ("namespace", "fake")

    def _own_dirs(self, record: SandboxRecord) -> Sequence[str]:
        """The sandbox's own writable dirs under its state dir, renewed by :meth:`reset`;
        :meth:`_prepare` creates them."""
        return []

    async def reset(self, sandbox_id: str) -> HostSandbox:
        """Bring a sandbox back to how :meth:`create` made it, for the next task: nothing
        running, fresh own dirs (swapped from the host side), cgroup limits as specced.
        ProviderError when that cannot be verified; the caller must then destroy it."""
        if not self.resets_safely():
            raise CapabilityError(
                f"provider {self.name!r} cannot reset a sandbox safely",
                hint="use the destroy pool policy for it",
            )
        stopped = self._still_stopped(sandbox_id)
        if stopped is not None:
            # The pool stops a sandbox before it clears its slot, then resets it: that stop
            # scanned every host process for the sandbox's marker, and nothing of the
            # sandbox can have started since. The cgroup is emptied again all the same.
            record = stopped
            cgroup = self.cgroup(record)
            if cgroup is not None:
                await cgroup.kill_all()
        else:
            await self.stop(sandbox_id)
            record = self.store.load(sandbox_id)
        directory = self.store.dir(sandbox_id)
        names = self._own_dirs(record)
        # Nothing of the sandbox runs now: a directory no task changed since it was made
        # fresh (a trivial task's tmp) is kept as it is, not swapped for an equal one.
        fresh = self._fresh.pop(sandbox_id, {})
        renewed = [n for n in names if not scratch.untouched(directory / n, fresh.get(n))]
        retired = [scratch.retire(directory, name) for name in renewed]
        # _prepare: fresh dirs, limits written again. The record read above: nothing saves
        # it meanwhile (only a start does, and nothing of the sandbox runs).
        sandbox = await self._start(record)
        gone = [old for old in retired if old is not None]
        if gone:  # one thread hop for all of them
            await asyncio.to_thread(scratch.remove_trees, gone)
        self._verify_reset(sandbox._record, names)  # the record the start has just saved
        self._remember_fresh(sandbox_id, names)
        return sandbox

    def _remember_fresh(self, sandbox_id: str, names: Sequence[str]) -> None:
        """Stamp the own directories just made (or kept) fresh, before any command runs."""
        directory = self.store.dir(sandbox_id)
        self._fresh[sandbox_id] = {name: scratch.stamp(directory / name) for name in names}

    def _verify_reset(self, record: SandboxRecord, names: Sequence[str]) -> None:
        directory = self.store.dir(record.id)
        for name in names:
            if not scratch.holds_no_files(directory / name):
                raise ProviderError(f"sandbox {record.id}: {name}/ is not fresh after its reset")
        cgroup = self.cgroup(record)
        if cgroup is not None and cgroup.pids():
            raise ProviderError(f"sandbox {record.id}: processes left after its reset")

    async def destroy(self, sandbox_id: str) -> None:
        """Stop and remove the sandbox; never touches the spec's workspace. Idempotent."""
        self._stopped.pop(sandbox_id, None)
        self._fresh.pop(sandbox_id, None)
        directory = self.store.dir(sandbox_id)
        try:
            record: SandboxRecord | None = self.store.load(sandbox_id)
        except SandboxNotFound:
            record = None
        if record is not None:
            # On a full disk the record cannot be rewritten; the sandbox must go all the same.
            with contextlib.suppress(OSError):
                self.store.save(record.model_copy(update={"state": "destroyed"}))
            await self._kill(record)
            cgroup = self.cgroup(record)
            if cgroup is not None:
                await cgroup.remove()
        self._cgroup_made.pop(sandbox_id, None)
        self.store.forget(sandbox_id)
        # Never follows a link (a workspace linked from here is safe) and gets past the
        # 000 and 555 directories and the deep trees a task may leave.
        try:
            await asyncio.to_thread(scratch.remove_tree, directory)
        except ProviderError:  # an immutable file: remove what can go
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
