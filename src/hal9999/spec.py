"""Contracts shared by every layer: commands, processes and sandboxes.

A command is either ``argv`` (an exact program and its arguments) or ``shell`` (a bash
script). Quoting happens in one place, :func:`CommandSpec.to_argv`; no call site builds an
opaque command string.
"""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class ArgvCommand(_Frozen):
    """An exact program and its arguments, run without a shell."""

    kind: Literal["argv"] = "argv"
    argv: tuple[str, ...]
    """Program first, then its arguments."""
    cwd: str | None = None
    """Working directory inside the sandbox; the sandbox's workdir when unset."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment for this command only."""

    @field_validator("argv")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("argv must name a program")
        return value


class ShellCommand(_Frozen):
    """A bash script; variables come from ``env``, never from interpolation."""

    kind: Literal["shell"] = "shell"
    script: str
    """The script text, run as ``bash -c SCRIPT``."""
    cwd: str | None = None
    """Working directory inside the sandbox; the sandbox's workdir when unset."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment for this command only."""


CommandSpec = Annotated[ArgvCommand | ShellCommand, Field(discriminator="kind")]


def to_argv(command: ArgvCommand | ShellCommand) -> list[str]:
    """The argv that runs ``command`` (env and cwd are applied by the runner)."""
    if isinstance(command, ArgvCommand):
        return list(command.argv)
    return ["bash", "-c", command.script]


def display(command: ArgvCommand | ShellCommand) -> str:
    """A human-readable rendering for logs; never executed."""
    return shlex.join(to_argv(command))


class RestartPolicy(_Frozen):
    """Whether a process is restarted when it exits."""

    mode: Literal["never", "on-failure"] = "never"
    """``never`` (agents) or ``on-failure`` (services): a run that fails (any status but 0;
    a death by signal n is 128+n) is run again at once, by PM2 under ``pm2`` and by the
    supervisor under ``tmux`` and ``direct``."""
    max_restarts: int = 0
    """Restarts allowed before giving up, whatever each run lasts: 2 is three runs in all."""


class ProcessSpec(_Frozen):
    """A long-running process: what to run, how to restart it, where its output goes."""

    name: str
    """Unique name within a sandbox, e.g. ``hal-<task-id>``."""
    command: ArgvCommand | ShellCommand = Field(discriminator="kind")
    """What to run."""
    restart: RestartPolicy = RestartPolicy.model_construct()
    """Restart policy. The default is built from the fields' defaults without validating
    them, which would build ``RestartPolicy``'s own validator and serializer at import;
    it equals ``RestartPolicy()`` (``tests/test_spec.py``)."""
    log_path: Path
    """Host file that receives the process's combined stdout and stderr."""
    exit_path: Path
    """Host file that receives the exit status when the process ends."""
    parser: str | None = None
    """Agent (preset name or template) whose output parser runs on the raw output."""
    events_path: Path | None = None
    """Host file receiving the parsed events (masked JSON lines), when ``parser`` is set."""
    mask_vars: tuple[str, ...] | None = None
    """Exec-time variables whose values are secrets; ``None`` treats every one as secret."""
    mask_files: tuple[Path, ...] = ()
    """Host credential files whose token-like values are secrets."""
    log_cap: int | None = None
    """Bytes of output one run keeps in the log (head and tail); ``None`` is unbounded."""


MIN_CPUS = 0.01
"""The smallest CPU quota: 1% of a core (the cgroup quota's resolution)."""
MAX_CPUS = 4096
"""More cores than any host has; the cgroup quota arithmetic stays exact below it."""
MIN_MEMORY_MB = 8
"""Less memory than this cannot start a shell; a smaller limit is a typo, not a limit."""
MAX_MEMORY_MB = 1 << 30
"""A petabyte in MiB: keeps the byte count inside the 64-bit cgroup value (disk too)."""
MAX_PIDS = 4_194_304
MIN_PIDS = 8
"""Fewer cannot start a sandbox's launcher, the agent's shell and the collection after it
(1: bwrap cannot make its namespaces; 4: the collection cannot fork)."""
"""The kernel's largest ``pid_max``."""
MAX_DISK_FILES = 1 << 40
"""More inodes than any filesystem hands one directory tree."""


_N = TypeVar("_N", int, float)


def _no_limit_or(low: float, high: float, what: str) -> Callable[[_N | None], _N | None]:
    """A limit's check: unset, 0 (no limit), or ``what`` from ``low`` (up) to ``high``."""
    span = f"from {low} to {high}" if low else f"up to {high}"

    def check(value: _N | None) -> _N | None:
        if value is not None and value != 0 and not (low <= value <= high):
            raise ValueError(f"expected 0 (no limit) or {what} {span}")
        return value

    return check


class Resources(_Frozen):
    """Resource limits. ``None`` (unset) means the safe default of a provider that enforces
    limits (:mod:`hal9999.providers.limits`: pids and memory the share of one concurrent task
    of the totals, every core, 20 GiB of disk in 1 Mi files); ``0`` means unlimited."""

    cpus: float | None = None
    """CPU quota in cores (e.g. 1.5)."""
    memory_mb: int | None = None
    """Memory limit in MiB, swap included where the kernel allows."""
    pids: int | None = None
    """Maximum number of processes and threads."""
    disk_mb: int | None = None
    """Disk the sandbox may fill, in MiB: its workspace, home and scratch space together
    (checked while the task runs), and no single file larger."""
    disk_files: int | None = None
    """Files, directories and links (each name) the sandbox may make in the same places
    (checked while the task runs)."""

    # Validators apart from the fields and their defaults: one rule for CLI, config and env.
    # 0 asks for no limit (see providers.limits); anything else must be a real limit.
    _cpus = field_validator("cpus")(_no_limit_or(MIN_CPUS, MAX_CPUS, "a number of cores"))
    _memory = field_validator("memory_mb")(_no_limit_or(MIN_MEMORY_MB, MAX_MEMORY_MB, "MiB"))
    _pids = field_validator("pids")(_no_limit_or(MIN_PIDS, MAX_PIDS, "a number of processes"))

    _disk = field_validator("disk_mb")(_no_limit_or(0, MAX_MEMORY_MB, "MiB"))
    _disk_files = field_validator("disk_files")(
        _no_limit_or(0, MAX_DISK_FILES, "a number of files")
    )


class Bind(_Frozen):
    """A host directory made visible inside the sandbox."""

    source: Path
    """Host path."""
    target: str
    """Absolute path inside the sandbox."""
    read_only: bool = True
    """Mount read-only (the default) or read-write."""


NetworkMode = Literal["none", "host"]


class SandboxSpec(_Frozen):
    """Everything that defines a sandbox; the warm pool keys on the whole spec."""

    provider: str = "bwrap"
    """Registered provider name."""
    image: str | None = None
    """Image name for VM and container providers."""
    rootfs: Path | None = None
    """A root filesystem directory for namespace providers (host ``/usr`` when unset)."""
    resources: Resources = Resources.model_construct()
    """CPU, memory and pid limits (``Resources()``, not validated at import: see
    ``ProcessSpec.restart``)."""
    network: NetworkMode | tuple[str, ...] = "none"
    """``none``, ``host``, or an allow-list of ``host:port`` endpoints."""
    workspace: Path | None = None
    """Host directory mounted read-write as the sandbox's working directory."""
    binds: tuple[Bind, ...] = ()
    """Further host directories to mount."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment for every command (non-secret; secrets go in at exec time)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels recorded with the sandbox (e.g. the task id)."""


@dataclass(frozen=True)
class AgentSettings:
    """Per-agent settings from config (``[agents.<name>]``) and the command line."""

    model: str | None = None
    """Model name passed to the agent."""
    base_url: str | None = None
    """API endpoint the agent talks to."""
    api_key_env: str | None = None
    """Host environment variable holding the API key (forwarded at exec time only)."""
    command: str | None = None
    """Override of the agent's program (path or name)."""
    extra_args: tuple[str, ...] = ()
    """Arguments appended to the agent's command line."""
