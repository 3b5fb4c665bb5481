"""The agent contract: a task description in, a runnable command and an output parser out.

An agent knows nothing of providers. It is told where things are *inside* the sandbox
(workspace, its home, the prompt file) and returns an :class:`AgentLaunch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hal9999.spec import AgentSettings as AgentSettings
from hal9999.spec import ArgvCommand, ShellCommand

if TYPE_CHECKING:  # the event models are a parser's
    from hal9999.events.models import Event


@dataclass(frozen=True)
class McpServer:
    """An MCP server the agent CLI starts over stdio (hal's own: the hive's tools)."""

    name: str
    """The server's key in the CLI's config; tools appear as ``mcp__<name>__<tool>``."""
    command: str
    """The program the CLI runs inside the sandbox (e.g. ``python3``)."""
    args: tuple[str, ...] = ()
    """Its arguments (e.g. the forwarder script and the socket it reaches)."""
    timeout_s: int = 60
    """How long the CLI should wait for one tool call (a long-poll returns well before)."""


@dataclass(frozen=True)
class AgentContext:
    """Where a task's inputs are, as paths inside the sandbox."""

    task_id: str
    prompt: str
    prompt_file: str
    """File inside the sandbox holding the prompt."""
    workspace: str
    """The repository checkout the agent works in."""
    home: str
    """A per-session directory used as the agent's HOME and config dir."""
    resume_session: str | None = None
    """The agent's own session id to continue, when resuming."""
    settings: AgentSettings = field(default_factory=AgentSettings)
    mcp: McpServer | None = None
    """hal's MCP server for this run (a hive agent's tools), wired into the CLI's config."""


@dataclass(frozen=True)
class AgentLaunch:
    """What the orchestrator runs for an agent."""

    command: ArgvCommand | ShellCommand
    env: dict[str, str] = field(default_factory=dict)
    """Non-secret environment (telemetry off, HOME, config dirs)."""
    files: dict[str, bytes] = field(default_factory=dict)
    """Config files to write inside the sandbox before start (path -> content)."""
    secret_env: tuple[str, ...] = ()
    """Host environment variables to forward at exec time (e.g. the API key)."""


class OutputParser(Protocol):
    """Turns an agent's output stream into events. Robust to partial lines and noise."""

    def feed(self, data: str) -> list[Event]:
        """Consume a chunk of output; return the events it completes."""
        ...

    def close(self) -> list[Event]:
        """End of output; return events from any buffered partial line."""
        ...


@runtime_checkable
class Agent(Protocol):
    """A coding agent preset.

    An agent may also set ``needs_network = True`` (optional, read by :func:`needs_network`)
    when it calls a remote API, so hal can warn when it runs in a sandbox without network.
    """

    name: str
    program: str
    """The executable the agent needs inside the sandbox."""
    install_hint: str
    """How to install the program, for error messages and ``hal doctor``."""
    supports_resume: bool

    def build(self, ctx: AgentContext) -> AgentLaunch:
        """The command, environment and files that run the task."""
        ...

    def parser(self) -> OutputParser:
        """A fresh parser for one run's output."""
        ...


def needs_network(agent: Agent) -> bool:
    """Whether ``agent`` says it calls a remote API (its optional ``needs_network`` flag)."""
    return getattr(agent, "needs_network", False) is True
