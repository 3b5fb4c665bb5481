"""The real agent CLIs the end-to-end tests drive, pointed at the scripted LLM server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.e2e.conftest import HalCli
from tests.llm_server.scripts import fix_bug_script
from tests.llm_server.server import ScriptedLLMServer

from hal9999.providers.bwrap.args import WORKDIR


@dataclass(frozen=True)
class RealAgent:
    """What one CLI needs from the server and what its run must show."""

    model: str
    """The model the config names; codex needs a slug it knows to offer apply_patch."""
    openai_base: bool
    """True when the base URL carries ``/v1`` (OpenAI style), False for Anthropic's root."""
    paths: frozenset[str]
    """The only ``METHOD /path`` the CLI may request."""
    auth_header: str
    tools: frozenset[str]
    """Tool names its parser must report, from the Script's calls."""
    reports_cost: bool
    """Whether the CLI reports a cost (claude's total_cost_usd, opencode's step cost)."""
    extra_args: tuple[str, ...] = ()


AGENTS: dict[str, RealAgent] = {
    "claude": RealAgent(
        model="claude-sonnet-4-5",
        openai_base=False,
        # Claude Code may probe the base URL with HEAD /.
        paths=frozenset({"POST /v1/messages", "HEAD /"}),
        auth_header="x-api-key",
        tools=frozenset({"Read", "Edit", "Bash"}),
        reports_cost=True,
    ),
    "codex": RealAgent(
        model="gpt-5.5",
        openai_base=True,
        paths=frozenset({"POST /v1/responses"}),
        auth_header="authorization",
        tools=frozenset({"shell", "apply_patch"}),
        reports_cost=False,
        # Proves the config.toml the preset writes has only keys this Codex knows.
        extra_args=("--strict-config",),
    ),
    "opencode": RealAgent(
        model="scripted-model",
        openai_base=True,
        paths=frozenset({"POST /v1/chat/completions"}),
        auth_header="authorization",
        tools=frozenset({"read", "edit", "bash"}),
        reports_cost=True,
    ),
    "aider": RealAgent(
        model="scripted-model",
        openai_base=True,
        paths=frozenset({"POST /v1/chat/completions"}),
        auth_header="authorization",
        tools=frozenset({"edit"}),
        reports_cost=False,
    ),
    "gemini": RealAgent(
        model="gemini-2.5-pro",
        openai_base=False,
        paths=frozenset({"POST /v1beta/models/gemini-2.5-pro:streamGenerateContent"}),
        auth_header="x-goog-api-key",
        tools=frozenset({"read_file", "replace", "run_shell_command"}),
        reports_cost=False,
    ),
}
"""Agent preset name to what its end-to-end run looks like."""


def point_at_server(hal: HalCli, server: ScriptedLLMServer, agent: str) -> RealAgent:
    """Serve ``agent``'s bug-fix Script and point its preset at the server."""
    spec = AGENTS[agent]
    script = fix_bug_script(agent, Path(WORKDIR))
    script.model = spec.model
    server.script = script
    base_url = server.openai_base_url if spec.openai_base else server.base_url
    hal.configure(agent, base_url=base_url, model=spec.model, extra_args=spec.extra_args)
    return spec
