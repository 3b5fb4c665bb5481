"""How to run each real agent CLI offline against a ScriptedLLMServer.

Every command runs with an isolated HOME and XDG dirs (under `home`), a dummy key, the
server's base URL, and each CLI's switches that stop update checks, telemetry and other
background traffic. Builders write the config files a CLI needs into `home` and return the
argv and the complete environment (nothing is inherited from the caller).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DUMMY_KEY = "sk-hal-dummy-key"
"""The API key every CLI is given; the server log shows it arrived."""


@dataclass(frozen=True)
class AgentSetup:
    """What a command builder needs to know."""

    base_url: str
    """Server root without /v1, e.g. http://127.0.0.1:PORT."""
    home: Path
    """An empty directory that becomes HOME; config files go under it."""
    prompt: str
    model: str
    files: tuple[str, ...] = ()
    """Files to hand the agent up front (aider adds them to its chat)."""


@dataclass(frozen=True)
class AgentCommand:
    """A full argv and environment for `subprocess` (run with stdin from /dev/null)."""

    argv: list[str]
    env: dict[str, str]
    output_format: str
    """`jsonl` when stdout is one JSON object a line, `text` otherwise."""


def base_env(home: Path) -> dict[str, str]:
    """HOME, XDG dirs and PATH: nothing from the caller's environment leaks in."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
    }


def claude_command(setup: AgentSetup) -> AgentCommand:
    """Claude Code in print mode with stream-json output."""
    env = base_env(setup.home) | {
        "ANTHROPIC_BASE_URL": setup.base_url,
        "ANTHROPIC_API_KEY": DUMMY_KEY,
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        # Root may only skip permissions inside a sandbox; this says it is one.
        "IS_SANDBOX": "1",
    }
    argv = ["claude", "-p", setup.prompt, "--output-format", "stream-json", "--verbose"]
    argv.append("--dangerously-skip-permissions")
    return AgentCommand(argv, env, "jsonl")


def codex_command(setup: AgentSetup) -> AgentCommand:
    """Codex CLI `exec` with a Responses-API model provider pointing at the server."""
    codex_home = setup.home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        f"model = {json.dumps(setup.model)}\n"
        'model_provider = "hal"\n'
        "check_for_update_on_startup = false\n"
        "\n"
        "[model_providers.hal]\n"
        'name = "hal scripted server"\n'
        f'base_url = "{setup.base_url}/v1"\n'
        'env_key = "HAL_LLM_API_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
        "\n"
        "[analytics]\n"
        "enabled = false\n"
        "\n"
        # Each of these looks a host up at start (api.github.com, chatgpt.com) and waits.
        "[features]\n"
        "plugins = false\n"
        "remote_plugin = false\n"
        "apps = false\n"
        # On by default: a refused connection is retried forever ("waiting for network").
        "unbounded_connection_retries = false\n"
    )
    env = base_env(setup.home) | {"CODEX_HOME": str(codex_home), "HAL_LLM_API_KEY": DUMMY_KEY}
    argv = ["codex", "exec", "--json", "--skip-git-repo-check"]
    argv += ["--dangerously-bypass-approvals-and-sandbox", setup.prompt]
    return AgentCommand(argv, env, "jsonl")


def opencode_command(setup: AgentSetup) -> AgentCommand:
    """opencode `run` with an OpenAI-compatible provider from OPENCODE_CONFIG_CONTENT."""
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "hal": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "hal scripted server",
                "options": {"baseURL": f"{setup.base_url}/v1", "apiKey": DUMMY_KEY},
                # A price (USD per million tokens) so step_finish reports a non-zero cost.
                "models": {setup.model: {"name": setup.model, "cost": {"input": 1, "output": 2}}},
            }
        },
        "model": f"hal/{setup.model}",
        "permission": {"edit": "allow", "bash": "allow", "webfetch": "allow"},
        "autoupdate": False,
        "share": "disabled",
    }
    env = base_env(setup.home) | {
        "OPENCODE_CONFIG_CONTENT": json.dumps(config),
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    }
    return AgentCommand(["opencode", "run", "--format", "json", setup.prompt], env, "jsonl")


def seed_aider_price_cache(home: Path, model: str) -> None:
    """Write aider's model-price cache so it skips its download at start.

    aider refetches when the cache is older than a day or empty (`{}` counts as empty), so
    the file holds one entry for the scripted model with a fresh mtime.
    """
    cache = home / ".aider" / "caches" / "model_prices_and_context_window.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "max_input_tokens": 128000,
        "max_output_tokens": 16384,
        "max_tokens": 16384,
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 2e-06,
        "litellm_provider": "openai",
        "mode": "chat",
    }
    cache.write_text(json.dumps({model: entry, f"openai/{model}": entry}))
    now = time.time()
    os.utime(cache, (now, now))


def aider_command(setup: AgentSetup) -> AgentCommand:
    """aider, one message, SEARCH/REPLACE edit format, via an OpenAI-compatible base URL."""
    seed_aider_price_cache(setup.home, setup.model)
    env = base_env(setup.home) | {
        "OPENAI_API_KEY": DUMMY_KEY,
        # litellm would otherwise fetch its own copy of the price list at import.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    argv = ["aider", "--model", f"openai/{setup.model}"]
    argv += ["--openai-api-base", f"{setup.base_url}/v1", "--openai-api-key", DUMMY_KEY]
    argv += ["--edit-format", "diff", "--no-check-update", "--no-analytics", "--yes-always"]
    argv += ["--no-show-release-notes", "--no-show-model-warnings", "--no-gitignore"]
    argv += ["--no-pretty", "--no-fancy-input", "--message", setup.prompt, *setup.files]
    return AgentCommand(argv, env, "text")


def gemini_command(setup: AgentSetup) -> AgentCommand:
    """Gemini CLI, headless (prompt on stdin is not used here: `-p`), stream-json output.

    `security.auth.selectedType = gemini-api-key` makes it take GEMINI_API_KEY; without it a
    base URL selects the `gateway` auth type. Usage statistics and telemetry are off.
    """
    settings = {
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "security": {"auth": {"selectedType": "gemini-api-key"}},
    }
    (setup.home / ".gemini").mkdir(parents=True, exist_ok=True)
    (setup.home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    env = base_env(setup.home) | {
        "GEMINI_API_KEY": DUMMY_KEY,
        "GOOGLE_GEMINI_BASE_URL": setup.base_url,
        "GEMINI_TELEMETRY_ENABLED": "false",
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
    }
    argv = ["gemini", "-p", setup.prompt, "--output-format", "stream-json", "--yolo"]
    return AgentCommand([*argv, "-m", setup.model], env, "jsonl")


COMMANDS: dict[str, Callable[[AgentSetup], AgentCommand]] = {
    "claude": claude_command,
    "codex": codex_command,
    "opencode": opencode_command,
    "aider": aider_command,
    "gemini": gemini_command,
}
"""Agent name (as in the `hal9999.agents` entry points) to its command builder."""
