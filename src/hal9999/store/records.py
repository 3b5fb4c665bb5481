"""Rows of the store as pydantic models."""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hal9999.values import empty_list

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

RepoKind = Literal["local", "url"]
"""Whether a task's repository is a host path or a URL."""


class TaskRecord(BaseModel):
    """One task as the store keeps it. Never holds secret values."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    id: str
    """Unique task id."""
    prompt: str
    """The work the agent was asked to do."""
    agent: str
    """Agent preset name."""
    provider: str
    """Sandbox provider name."""
    process_manager: str
    """Process manager running the agent (``tmux``, ``direct``)."""
    repo: str
    """The source repository: a host path or a URL."""
    repo_kind: RepoKind
    """Whether ``repo`` is a local path or a URL."""
    ref: str | None = None
    """The ref the work started from, as the user gave it."""
    base_commit: str | None = None
    """The commit ``ref`` resolved to."""
    branch: str
    """The branch the agent's work lands on (``hal/<task-id>``)."""
    status: str
    """Current state (see the task state machine)."""
    created_at: float
    """Unix time the task was created."""
    started_at: float | None = None
    """Unix time the agent started."""
    finished_at: float | None = None
    """Unix time the task reached a final or resting state."""
    exit_code: int | None = None
    """The agent's exit status."""
    error_code: str | None = None
    """A :mod:`hal9999.errors` code when the task failed."""
    error_message: str | None = None
    """What went wrong, for people."""
    sandbox_id: str | None = None
    """The sandbox the task runs or ran in."""
    runner_pid: int | None = None
    """Pid of the hal process driving the task, to detect orphans."""
    runner_started: int | None = Field(default=None, exclude=True)
    """When ``runner_pid`` started (:func:`hal9999.procs.started`), which the store records
    with it: with the pid it names that process, not a later one that reused the pid. Kept
    in the store only (no JSON of a task shows it)."""
    session_dir: str
    """Host path of the task's session directory."""
    agent_session_id: str | None = None
    """The agent's own session id, used to resume it."""
    timeout_s: float | None = None
    """Run time limit in seconds; ``None`` for none."""
    input_tokens: int = 0
    """Input tokens used, as the agent reports them."""
    output_tokens: int = 0
    """Output tokens used, as the agent reports them."""
    cost_usd: float | None = None
    """Cost in US dollars, when the agent reports it."""
    files_changed: int = 0
    """Files changed on the task's branch."""
    env_keys: list[str] = Field(default_factory=empty_list)
    """Names of the environment variables forwarded to the agent; never their values."""
    resumes: int = 0
    """How many times the task was resumed."""
    priority: int = 0
    """Queue order: higher starts first; equal priorities start oldest first."""
    providers: list[str] = Field(default_factory=empty_list)
    """Providers the task may run on, in priority order (empty: just ``provider``)."""
    retries: int = 0
    """How many times an agent failure is retried (infrastructure failures always are)."""
    agent_retries: int = 0
    """Agent failures retried so far."""
    infra_retries: int = 0
    """Infrastructure failures (sandbox, provider, process) retried so far."""
    not_before: float | None = None
    """Unix time before which the queued task is not started (retry backoff)."""
    issue: str | None = None
    """The web address of the issue the task works on (``hal run --issue``)."""

    @field_validator("env_keys")
    @classmethod
    def _names_only(cls, value: list[str]) -> list[str]:
        # Refuse "KEY=value" and the like: a secret must never reach the database.
        bad = [name for name in value if not _ENV_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"env_keys must hold variable names only, got {len(bad)} other")
        return value


SandboxState = Literal["creating", "idle", "leased", "resetting", "destroying", "gone"]
"""Where a pooled sandbox is in its life (see :mod:`hal9999.pool`)."""


def task_record(doc: dict[str, Any]) -> TaskRecord:
    """The record of a task as the API or ``--json`` gives it: its fields and
    ``branch_made`` (read from the session when given, not the record's)."""
    return TaskRecord.model_validate({k: v for k, v in doc.items() if k != "branch_made"})
