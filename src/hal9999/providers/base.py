"""The provider contract: lifecycle on the provider, operations on the sandbox handle.

A provider knows nothing of agents, tasks, git or events. It turns a :class:`SandboxSpec`
into a running sandbox and hands back a :class:`Sandbox` through which commands run and
files move. What a provider can do is declared in :class:`Capabilities`, never probed.

Beside the contract, the optional hooks a provider may implement (the pool and ``hal doctor``
ask for them with ``isinstance``): :class:`WorkspaceAttach`, :class:`OwnWarmPool`,
:class:`SandboxPrime`, :class:`SandboxReset` and, on the provider's class,
:class:`ProviderDoctor`.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar, runtime_checkable

from hal9999.spec import ArgvCommand, SandboxSpec, ShellCommand

if TYPE_CHECKING:
    from hal9999.providers.doctor import Check, DoctorScope

Command = ArgvCommand | ShellCommand

SandboxState = Literal["running", "stopped", "destroyed"]


@dataclass(frozen=True)
class Capabilities:
    """What a provider supports, declared up front."""

    isolation: Literal["none", "namespace", "vm", "fake"]
    """How strongly the sandbox is separated from the host."""
    network_modes: frozenset[str] = frozenset({"none", "host"})
    """Network modes accepted (``allow-list`` when allow-lists work)."""
    resource_limits: bool = False
    """Whether cpu/memory/pid limits are enforced."""
    host_launch: bool = False
    """Whether a host process can run a command inside the sandbox (:meth:`Sandbox.launch`)."""
    snapshot: bool = False
    """Whether ``snapshot``/``fork`` are available."""


SLOT_LABEL = "hal.slot"
"""Label naming a pooled sandbox's slot directory (the pool sets it; a provider that mounts
workspaces in place reads it)."""
STDOUT_LIMIT = 16 << 20
"""The most of a command's stdout :meth:`Sandbox.exec` holds unless its caller allows more:
past it the command is killed and :class:`~hal9999.errors.ExecError` raised (never cut short,
which a caller parsing the output would take for all of it). What a sandbox writes there is
the agent's (a git filter during collection, or a command a user runs); the callers that need
more (a file read, a pull's tar) say so per call."""


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a finished command."""

    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0

    def text(self) -> str:
        """Stdout decoded as UTF-8 (lossy)."""
        return self.stdout.decode("utf-8", "replace")


@dataclass(frozen=True)
class StreamEvent:
    """One item of :meth:`Sandbox.exec_stream`: a chunk of output, or the exit status last."""

    kind: Literal["stdout", "stderr", "exit"]
    data: bytes = b""
    exit_code: int | None = None


LOCAL_STOP_GRACE_S = 5
"""The grace of a command that works on the session in place (nothing to bring back)."""


@dataclass(frozen=True)
class Launch:
    """A host command line that runs a command inside the sandbox.

    ``env`` is the complete environment for the host process; secrets travel here, never in
    ``argv``.
    """

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    stop_grace_s: int = LOCAL_STOP_GRACE_S
    """How long the command has to end by itself once stopped before it is killed: a
    relay's is long enough for its last bring-back of the work (see
    :data:`hal9999.providers.remote.relay.STOP_GRACE_S`)."""


@dataclass(frozen=True)
class SandboxInfo:
    """A provider's record of one sandbox."""

    id: str
    provider: str
    state: SandboxState
    spec: SandboxSpec
    created_at: float


@runtime_checkable
class Sandbox(Protocol):
    """Operations on one sandbox. Paths are paths as seen inside the sandbox."""

    @property
    def id(self) -> str:
        """Unique sandbox id."""
        ...

    @property
    def provider(self) -> str:
        """Name of the provider that owns it."""
        ...

    @property
    def spec(self) -> SandboxSpec:
        """The spec it was created from."""
        ...

    @property
    def workdir(self) -> str:
        """Where the spec's workspace appears inside the sandbox."""
        ...

    def path(self, target: str) -> str:
        """Where the bind ``target`` (an absolute sandbox path) is seen by commands inside."""
        ...

    async def exec(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        # The provider must kill the command at the deadline, not merely stop waiting for it.
        timeout: float | None = None,  # noqa: ASYNC109
        stdout_limit: int = STDOUT_LIMIT,
    ) -> ExecResult:
        """Run a command to completion. ``env`` is exec-time environment (secrets go here).
        Past ``stdout_limit`` bytes of stdout the command is killed and ExecError raised."""
        ...

    def exec_stream(
        self, command: Command, *, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Run a command, yielding output as it comes and the exit status last."""
        ...

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """A host command line that runs ``command`` inside (when ``host_launch``)."""
        ...

    def attach_command(self) -> list[str]:
        """A host command line that opens an interactive shell inside."""
        ...

    async def read_file(self, path: str) -> bytes:
        """The contents of a file."""
        ...

    async def write_file_atomic(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write a file atomically (temp + rename), create parents, verify it."""
        ...

    async def exists(self, path: str) -> bool:
        """Whether the path exists."""
        ...

    async def mkdir(self, path: str, *, mode: int = 0o755) -> None:
        """Create a directory and its parents."""
        ...

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, or a directory tree with ``recursive``."""
        ...

    async def adopt(self, target: str) -> None:
        """Hand host-made files under the writable mount at ``target`` to the sandbox's
        user (a no-op where the sandbox runs as the user running hal)."""
        ...

    async def __aenter__(self) -> Sandbox: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class SocketForwarding(Protocol):
    """A sandbox whose provider can make ``127.0.0.1:PORT`` inside reach a unix socket on
    the host by itself (the qemu exec channel's ssh), so nothing needs to run inside for it."""

    async def forward_socket(self, port: int, socket: Path) -> None:
        """From now on, connections to ``127.0.0.1:port`` inside reach ``socket``."""
        ...


@runtime_checkable
class Provider(Protocol):
    """Sandbox lifecycle for one backend."""

    name: str
    capabilities: Capabilities

    async def create(self, spec: SandboxSpec) -> Sandbox:
        """Create and start a sandbox."""
        ...

    async def get(self, sandbox_id: str) -> Sandbox:
        """A handle on an existing sandbox; :class:`SandboxNotFound` when gone."""
        ...

    async def list(self) -> list[SandboxInfo]:
        """Every sandbox this provider knows of."""
        ...

    async def stop(self, sandbox_id: str) -> None:
        """Stop every process inside; the sandbox can be started again."""
        ...

    async def start(self, sandbox_id: str) -> Sandbox:
        """Start a stopped sandbox."""
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """Stop and remove the sandbox; never touches the spec's workspace. Idempotent."""
        ...


@runtime_checkable
class WorkspaceAttach(Protocol):
    """Optional provider hook: mount a task's workspace and binds into a live sandbox."""

    async def attach_workspace(self, sandbox_id: str, spec: SandboxSpec) -> None:
        """Make ``spec``'s workspace and binds (same targets as before) the sandbox's."""
        ...

    def attaches_workspaces(self) -> bool:
        """Whether attaching works here (else the provider's sandboxes are not pooled)."""
        ...


@runtime_checkable
class OwnWarmPool(Protocol):
    """Optional provider hook: the provider keeps warm sandboxes itself (kubernetes' free
    pods, claimed by label in ``create``, shared by every hal of the same owner); ``hal pool
    warm``/``drain`` and the keeper's ``min_warm`` ask it instead of holding idle ones."""

    async def fill_warm(self, count: int) -> int:
        """Make warm sandboxes until ``count`` wait; how many were made."""
        ...

    async def drain_warm(self) -> int:
        """Destroy every warm, unclaimed sandbox; how many."""
        ...

    async def warm_count(self) -> int:
        """How many warm, unclaimed sandboxes wait."""
        ...


@runtime_checkable
class SandboxPrime(Protocol):
    """Optional provider hook: run what makes a new sandbox's first command as fast as its
    later ones, while the sandbox waits idle in the pool (a restored microVM under TCG
    translates its command path afresh on its first command)."""

    async def prime(self, sandbox_id: str) -> None:
        """Run a command that changes nothing in the new, idle sandbox; raises when it
        fails (the pool then destroys the sandbox)."""
        ...


@runtime_checkable
class SandboxReset(Protocol):
    """Optional provider hook: make a used sandbox as good as new for the next task."""

    async def reset(self, sandbox_id: str) -> Sandbox:
        """Nothing running, the sandbox's own dirs fresh, limits as specced; raises when it
        cannot verify that (the pool then destroys the sandbox). Returns its handle."""
        ...

    def resets_safely(self) -> bool:
        """Whether :meth:`reset` can leave nothing of a task behind with this provider."""
        ...


@runtime_checkable
class ProviderDoctor(Protocol):
    """Optional provider hook, on the provider's class (``hal doctor`` builds no provider:
    it reports on the ones that cannot be built too): what the provider needs on this machine,
    what is missing and how to fix it. It only looks, and says a failure as a line."""

    @staticmethod
    async def doctor(scope: DoctorScope) -> list[Check]:
        """The provider's lines of the report."""
        ...


def doctor_in(
    module: str, checks: str = "checks"
) -> staticmethod[[DoctorScope], Awaitable[list[Check]]]:
    """A provider's :meth:`ProviderDoctor.doctor` made of the ``checks`` function of
    ``module``, imported only when ``hal doctor`` calls it (a run loads none of it)."""

    async def doctor(scope: DoctorScope) -> list[Check]:
        found: Callable[[DoctorScope], Awaitable[list[Check]]]
        found = getattr(importlib.import_module(module), checks)
        return await found(scope)

    return staticmethod(doctor)


_S = TypeVar("_S", bound=Sandbox)


async def fork_all(
    create: Callable[[SandboxSpec], Awaitable[_S]],
    destroy: Callable[[str], Awaitable[object]],
    image: str,
    count: int,
    spec: SandboxSpec,
) -> list[_S]:
    """``count`` sandboxes of ``spec`` made from snapshot ``image`` at once, all or none:
    when one fails, those made are destroyed and the first error is raised (a provider's
    ``fork``)."""
    import asyncio

    from hal9999.errors import ConfigError

    if count < 1:
        raise ConfigError("fork needs a count of at least 1")
    forked = spec.model_copy(update={"image": image})
    results = await asyncio.gather(*(create(forked) for _ in range(count)), return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        for sandbox in made:
            await destroy(sandbox.id)
        raise failed[0]
    return made
