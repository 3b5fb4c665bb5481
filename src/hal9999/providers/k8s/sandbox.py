"""A sandbox in a pod: commands over the exec websocket, files in a mirror under ``/hal``.

The pod is the boundary (its own filesystem, network policy and resources); inside it the
sandbox's directories are a mirror of the session's on the hal host, as the ``ssh``
provider keeps one (:mod:`hal9999.providers.ssh.mirror`): ``/hal/ws`` is the workspace,
``/hal/b<N>`` the binds, ``/hal/home`` the home, ``/hal/tmp`` the scratch dir, and
:meth:`KubeSandbox.path` says where each is seen. Writable directories come back to the host
after every command and file change, at stop, and from checkpoints; read-only ones go out
before every command. Every command runs under the environment wrapper (values over stdin,
never in the exec URL), reads exactly its stdin's length (v4 cannot close stdin), and
leaves nothing running when it ends (its ``HAL_EXEC`` marker). A stream closed early, or
timed out, is followed by a kill of that marker: kubelet does not kill an exec's process
when its stream goes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from pathlib import Path

from hal9999.envvars import env_argv
from hal9999.errors import CloudNotFound, ExecError
from hal9999.providers import limits
from hal9999.providers.base import (
    Command,
    ExecResult,
    Launch,
    StreamEvent,
)
from hal9999.providers.handle import SandboxHandle, collect
from hal9999.providers.host.exec import EXEC_MARKER_VAR
from hal9999.providers.k8s import execws
from hal9999.providers.k8s.config import Cluster, KubernetesConfig
from hal9999.providers.k8s.manifests import CONTAINER
from hal9999.providers.records import JsonRecords, SandboxRecord
from hal9999.providers.remote.files import MirrorFiles
from hal9999.providers.ssh import mirror, remote
from hal9999.providers.ssh.records import MountRecord
from hal9999.spec import ArgvCommand, SandboxSpec, to_argv

WORKDIR = "/workspace"
STDIN_LEN = 'n=$1; shift; head -c "$n" | "$@"'
"""Feed the command exactly ``$1`` bytes of stdin, then end of file (v4 has no close)."""


class KubeRecord(SandboxRecord):
    """What hal keeps about one sandbox's pod (``<state>/<id>.json``)."""

    namespace: str
    """The pod's namespace."""
    pod: str
    """The pod's name."""
    mounts: tuple[MountRecord, ...]
    """Its directories (``remote``: the directory in the pod)."""
    settings: KubernetesConfig
    """The provider's settings, resolved (how the relay reaches the cluster)."""


class KubeRecords(JsonRecords[KubeRecord]):
    """Records as JSON files under the provider's state dir."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, KubeRecord, layout="file")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _chain(first: bytes, rest: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


class KubeSandbox(MirrorFiles, SandboxHandle):
    """Operations on one sandbox's pod."""

    _record: KubeRecord

    def __init__(
        self, record: KubeRecord, records: KubeRecords, cluster: Callable[[], Cluster],
        destroy: Callable[[str], Awaitable[None]],
    ) -> None:  # fmt: skip
        self._record = record
        self._records = records
        self._cluster = cluster
        self._destroy = destroy
        self._mounts = remote.Mounts("/hal", [(m.target, m.remote, m.writable)
                                              for m in record.mounts])  # fmt: skip
        self._sync = asyncio.Lock()

    def _identity(self) -> tuple[str, str, SandboxSpec]:
        return self._record.id, self._record.provider, self._record.spec

    async def _destroy_self(self) -> None:
        await self._destroy(self.id)

    @property
    def record(self) -> KubeRecord:
        """The provider's record."""
        return self._record

    @property
    def workdir(self) -> str:
        """Where the workspace is seen by commands."""
        return self.path(WORKDIR)

    def path(self, target: str) -> str:
        """Where the mount ``target`` is seen by commands (its directory under /hal)."""
        found = self._mounts.remote(target)
        return found if found is not None else self._mounts.translate(target)

    def _in_pod(self, path: str) -> str:
        return self._mounts.mirrored(path)

    # -- commands ---------------------------------------------------------------------------
    def _extra_env(self) -> dict[str, str]:
        return {"TMPDIR": self.path("/tmp")}

    async def raw(
        self, argv: Sequence[str], stdin: AsyncIterable[bytes] | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """hal's own step in the pod (no wrapper, no secrets), streamed; a vanished pod is
        an :class:`ExecError` that says so."""
        record = self._record
        try:
            async with contextlib.aclosing(execws.stream(
                self._cluster(), record.namespace, record.pod, CONTAINER, argv, stdin=stdin,
            )) as events:  # fmt: skip
                async for event in events:
                    yield event
        except CloudNotFound as exc:
            raise ExecError(f"the pod of sandbox {self.id} is gone ({record.pod})",
                            hint="the session keeps what was last brought back; "
                            "start the task again") from exc  # fmt: skip

    async def run_raw(self, argv: Sequence[str], stdin: bytes | None = None,
                      time_limit: float | None = 120) -> ExecResult:  # fmt: skip
        """hal's own step, to completion."""
        feed = _once(stdin) if stdin is not None else None
        return await collect(self.raw(argv, feed), time_limit=time_limit, what=argv[0])

    async def _events(
        self, command: Command, env: Mapping[str, str] | None,
        stdin: bytes | AsyncIterable[bytes], token: str,
    ) -> AsyncGenerator[StreamEvent, None]:  # fmt: skip
        """The command's events. ``stdin`` as bytes is fed by length (any protocol); as a
        stream (the relay's) it ends with v5's close, which v4 servers cannot send."""
        full = self.command_env(command, env) | {EXEC_MARKER_VAR: token}
        cwd = self._in_pod(command.cwd or self.workdir)
        # The marker kill at the end (BARE) spares only its own shell: it must be the outer.
        argv = ["sh", "-c", remote.WRAPPER, "hal-k8s", "sh", "-c", remote.BARE, "hal-run", cwd]
        if isinstance(stdin, bytes):
            argv += ["sh", "-c", STDIN_LEN, "hal-stdin", str(len(stdin))]
            feed = _once(remote.env_line(full) + stdin)
        else:
            feed = _chain(remote.env_line(full), stdin)
        argv += to_argv(command)
        finished = False
        try:
            async with contextlib.aclosing(self.raw(argv, feed)) as events:
                async for event in events:
                    finished = event.kind == "exit"
                    yield event
        finally:
            if not finished:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.kill(EXEC_MARKER_VAR, token))

    async def kill(self, var: str, value: str) -> None:
        """Kill, until none is left, every process in the pod marked ``var=value``."""
        await self.run_raw(["sh", "-c", remote.KILL, "hal-kill", var, value], time_limit=30)

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """The relay (:mod:`.relay`) running ``command`` in the pod: values ride in its
        environment, names in argv; it pushes, checkpoints and pulls as the ssh relay does."""
        full = self.command_env(command, env)
        return remote.relay_launch("hal9999.providers.k8s.relay", self._records.root, self.id,
                                   command, full)  # fmt: skip

    def attach_command(self) -> list[str]:
        """An interactive bash in the pod through the relay (no terminal: the exec stream
        is opened without one)."""
        launch = self.launch(ArgvCommand(argv=("bash", "-i")))
        return env_argv(launch.env, launch.argv)

    # -- files (as commands inside the pod) --------------------------------------------------
    def _target(self, path: str, *, write: bool = False) -> str:
        # Nothing in the pod enforces a read-only bind: hal's own writes refuse it, and what a
        # command changes there is never brought back.
        if write and not self._mounts.writable(path):
            raise ExecError(f"cannot write {path}: it is on a read-only mount")
        return self._in_pod(path)

    # -- the mirror -------------------------------------------------------------------------
    async def _push_one(self, mount: MountRecord) -> None:
        if mount.host is None:
            return
        host = mirror.host_dir(mount.host)
        argv = await asyncio.to_thread(mirror.push_argv, mount.remote, host)
        chunks = mirror.pack_stream(host)
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            result = await collect(
                self.raw(argv, chunks),
                time_limit=None, what=f"pushing {mount.target}",
            )  # fmt: skip
        if not result.ok:
            raise ExecError(f"cannot send {mount.target} to the pod: "
                            f"{result.stderr.decode('utf-8', 'replace')[-300:]}")  # fmt: skip

    async def _pull_one(self, mount: MountRecord) -> None:
        assert mount.host is not None
        events = self.raw(["sh", "-c", mirror.PULL, "hal-pull", mount.remote])
        disk_mb = limits.effective(self.spec.resources).disk_mb
        await mirror.pull_into(events, mount.target, mirror.host_dir(mount.host), disk_mb)
