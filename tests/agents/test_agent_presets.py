"""What each preset runs: argv, environment, config files, key forwarding, resume."""

from __future__ import annotations

import json
import tomllib

import pytest

from hal9999.agents.base import AgentContext, AgentLaunch, AgentSettings
from hal9999.agents.custom import LAUNCH_SCRIPT, LAUNCHER_NAME
from hal9999.agents.registry import available_agents, resolve_agent
from hal9999.errors import ConfigError
from hal9999.spec import ArgvCommand

HOME = "/hal/home"
PROMPT_FILE = "/hal/input/prompt.txt"
SECRET = "sk-very-secret-value-123"
FEATURES_OFF = {
    "plugins": False,
    "remote_plugin": False,
    "apps": False,
    "unbounded_connection_retries": False,
}
"""Codex features that look hosts up at start or retry a dead endpoint forever."""


def context(settings: AgentSettings | None = None, resume: str | None = None) -> AgentContext:
    return AgentContext(
        task_id="t-0001",
        prompt="Fix the bug; don't $(rm -rf /)",
        prompt_file=PROMPT_FILE,
        workspace="/hal/workspace",
        home=HOME,
        resume_session=resume,
        settings=settings or AgentSettings(),
    )


def build(name: str, settings: AgentSettings | None = None, resume: str | None = None):
    return resolve_agent(name, settings).build(context(settings, resume))


def argv_of(launch: AgentLaunch) -> list[str]:
    """The agent's own argv, after the fixed launcher prefix."""
    command = launch.command
    assert isinstance(command, ArgvCommand)
    assert command.argv[:4] == ("sh", "-c", LAUNCH_SCRIPT, LAUNCHER_NAME)
    return list(command.argv[4:])


def everything(launch: AgentLaunch) -> str:
    files = {path: data.decode() for path, data in launch.files.items()}
    return json.dumps([launch.command.model_dump(), launch.env, files, launch.secret_env])


@pytest.mark.parametrize("name", available_agents())
def test_home_and_xdg_dirs_are_the_session_home(name: str) -> None:
    launch = build(name, AgentSettings(model="prov/model"))
    assert launch.env["HOME"] == HOME
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        assert launch.env[var].startswith(HOME + "/")
    assert launch.env["HAL_PROMPT_FILE"] == PROMPT_FILE
    assert launch.command.cwd == "/hal/workspace"
    # Config goes to the home; only the checkout's own git exclude list may be touched.
    exclude = "/hal/workspace/.git/info/exclude"
    assert all(path.startswith(HOME + "/") or path == exclude for path in launch.files)


@pytest.mark.parametrize("name", available_agents())
def test_key_is_forwarded_by_name_and_its_value_is_nowhere(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_KEY", SECRET)
    settings = AgentSettings(
        model="prov/model", base_url="http://llm:8080/v1", api_key_env="HOST_KEY"
    )
    launch = build(name, settings)
    assert launch.secret_env == ("HOST_KEY",)
    assert SECRET not in everything(launch)


@pytest.mark.parametrize("name", available_agents())
def test_no_key_configured_forwards_nothing(name: str) -> None:
    launch = build(name, AgentSettings(model="prov/model"))
    assert launch.secret_env == ()
    assert "HAL_API_KEY_ENV" not in launch.env


@pytest.mark.parametrize("name", available_agents())
def test_a_bad_key_variable_name_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match="not an environment variable name"):
        build(name, AgentSettings(model="p/m", base_url="http://x", api_key_env="MY KEY=1"))


@pytest.mark.parametrize("name", available_agents())
def test_the_prompt_text_is_never_on_the_command_line(name: str) -> None:
    launch = build(name, AgentSettings(model="prov/model"))
    assert "rm -rf" not in everything(launch)


@pytest.mark.parametrize("name", available_agents())
def test_command_override_and_extra_args(name: str) -> None:
    settings = AgentSettings(model="p/m", command="/opt/agent", extra_args=("--x", "y z"))
    argv = argv_of(build(name, settings))
    assert argv[0] == "/opt/agent"
    assert argv[argv.index("--x") + 1] == "y z"


@pytest.mark.parametrize("name", available_agents())
def test_task_settings_override_config_settings(name: str) -> None:
    agent = resolve_agent(name, AgentSettings(model="cfg/model", extra_args=("--cfg",)))
    launch = agent.build(context(AgentSettings(model="task/model")))
    text = " ".join(argv_of(launch)) + json.dumps(launch.env)
    assert "task" in text
    assert "cfg/model" not in text
    assert "--cfg" in argv_of(launch)


def test_claude_command_and_environment() -> None:
    settings = AgentSettings(model="sonnet", base_url="http://llm:8080", api_key_env="HOST_KEY")
    launch = build("claude", settings, resume="5f0c")
    assert argv_of(launch) == [
        "claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--dangerously-skip-permissions",
        "--model",
        "sonnet",
        "--resume",
        "5f0c",
    ]
    env = launch.env
    for var in (
        "DISABLE_TELEMETRY",
        "DISABLE_ERROR_REPORTING",
        "DISABLE_AUTOUPDATER",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "IS_SANDBOX",
    ):
        assert env[var] == "1"
    assert env["ANTHROPIC_BASE_URL"] == "http://llm:8080"
    assert env["HAL_API_KEY_ENV"] == "HOST_KEY"
    assert env["HAL_API_KEY_AS"] == "ANTHROPIC_API_KEY"
    assert resolve_agent("claude").supports_resume


def test_claude_key_already_under_its_own_name_needs_no_copy() -> None:
    launch = build("claude", AgentSettings(api_key_env="ANTHROPIC_API_KEY"))
    assert launch.secret_env == ("ANTHROPIC_API_KEY",)
    assert "HAL_API_KEY_ENV" not in launch.env
    assert "--resume" not in argv_of(launch)


def test_codex_command_and_config() -> None:
    settings = AgentSettings(model="gpt-5", base_url='http://llm:8080/v1?x="é"', api_key_env="HK")
    launch = build("codex", settings)
    assert argv_of(launch) == [
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "-m",
        "gpt-5",
        "-",
    ]
    assert launch.env["CODEX_HOME"] == f"{HOME}/.codex"
    assert "HAL_API_KEY_ENV" not in launch.env  # the config names the host variable itself
    config = tomllib.loads(launch.files[f"{HOME}/.codex/config.toml"].decode())
    assert config == {
        "check_for_update_on_startup": False,
        "model_provider": "hal",
        "analytics": {"enabled": False},
        "feedback": {"enabled": False},
        "features": FEATURES_OFF,
        "model_providers": {
            "hal": {
                "name": "hal",
                "base_url": 'http://llm:8080/v1?x="é"',
                "env_key": "HK",
                "wire_api": "responses",
            }
        },
    }


def test_codex_without_endpoint_or_key_keeps_the_builtin_provider() -> None:
    config = tomllib.loads(build("codex").files[f"{HOME}/.codex/config.toml"].decode())
    assert config == {
        "check_for_update_on_startup": False,
        "analytics": {"enabled": False},
        "feedback": {"enabled": False},
        "features": FEATURES_OFF,
    }


def test_codex_key_alone_defines_a_provider_on_the_openai_endpoint() -> None:
    launch = build("codex", AgentSettings(api_key_env="HK"))
    config = tomllib.loads(launch.files[f"{HOME}/.codex/config.toml"].decode())
    assert config["model_providers"]["hal"]["base_url"] == "https://api.openai.com/v1"


def test_codex_resume() -> None:
    launch = build("codex", AgentSettings(extra_args=("-c", "a=1")), resume="0199a213")
    assert argv_of(launch) == [
        "codex",
        "exec",
        "resume",
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "-c",
        "a=1",
        "0199a213",
        "-",
    ]
    assert resolve_agent("codex").supports_resume


def test_opencode_command_and_config() -> None:
    settings = AgentSettings(model="qwen3-coder", base_url="http://llm:8080/v1", api_key_env="HK")
    launch = build("opencode", settings, resume="ses_1")
    assert argv_of(launch) == [
        "opencode",
        "run",
        "--format",
        "json",
        "--model",
        "hal/qwen3-coder",
        "--session",
        "ses_1",
    ]
    for var in (
        "OPENCODE_DISABLE_AUTOUPDATE",
        "OPENCODE_DISABLE_MODELS_FETCH",
        "OPENCODE_DISABLE_LSP_DOWNLOAD",
        "OPENCODE_DISABLE_SHARE",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS",
    ):
        assert launch.env[var] == "1"
    config = json.loads(launch.env["OPENCODE_CONFIG_CONTENT"])
    assert config["permission"] == "allow"
    assert config["autoupdate"] is False
    assert config["share"] == "disabled"
    assert config["snapshot"] is False
    assert config["model"] == "hal/qwen3-coder"
    assert config["provider"]["hal"] == {
        "npm": "@ai-sdk/openai-compatible",
        "name": "hal",
        "options": {"baseURL": "http://llm:8080/v1", "apiKey": "{env:HK}"},
        "models": {"qwen3-coder": {"name": "qwen3-coder"}},
    }


def test_opencode_key_for_a_builtin_provider() -> None:
    launch = build("opencode", AgentSettings(model="anthropic/claude-x", api_key_env="HK"))
    config = json.loads(launch.env["OPENCODE_CONFIG_CONTENT"])
    assert config["provider"] == {"anthropic": {"options": {"apiKey": "{env:HK}"}}}
    assert argv_of(launch)[-2:] == ["--model", "anthropic/claude-x"]


@pytest.mark.parametrize(
    "settings",
    [AgentSettings(base_url="http://llm"), AgentSettings(model="bare", api_key_env="HK")],
)
def test_opencode_needs_a_model_it_can_place(settings: AgentSettings) -> None:
    with pytest.raises(ConfigError):
        build("opencode", settings)


def test_gemini_command_environment_and_settings() -> None:
    settings = AgentSettings(model="gemini-2.5-pro", base_url="http://llm:8080", api_key_env="HK")
    launch = build("gemini", settings, resume="4704edc5")
    assert argv_of(launch) == [
        "gemini",
        "--output-format",
        "stream-json",
        "--yolo",
        "-m",
        "gemini-2.5-pro",
        "--resume",
        "4704edc5",
    ]
    assert launch.env["GEMINI_TELEMETRY_ENABLED"] == "false"
    assert launch.env["GOOGLE_GEMINI_BASE_URL"] == "http://llm:8080"
    assert launch.env["HAL_API_KEY_AS"] == "GEMINI_API_KEY"
    stored = json.loads(launch.files[f"{HOME}/.gemini/settings.json"])
    assert stored == {
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "security": {"auth": {"selectedType": "gemini-api-key"}},
    }


def test_goose_command_and_environment() -> None:
    settings = AgentSettings(model="anthropic/claude-sonnet-4-5", api_key_env="HK")
    launch = build("goose", settings)
    assert argv_of(launch) == [
        "goose",
        "run",
        "--instructions",
        PROMPT_FILE,
        "--output-format",
        "stream-json",
        "--with-builtin",
        "developer",
        "--provider",
        "anthropic",
        "--model",
        "claude-sonnet-4-5",
    ]
    env = launch.env
    assert env["GOOSE_MODE"] == "auto"
    assert env["GOOSE_TELEMETRY_ENABLED"] == "false"
    assert "GOOSE_DISABLE_KEYRING" in env
    assert env["GOOSE_PROVIDER"] == "anthropic"
    assert env["GOOSE_MODEL"] == "claude-sonnet-4-5"
    assert env["HAL_API_KEY_AS"] == "ANTHROPIC_API_KEY"
    assert not resolve_agent("goose").supports_resume


def test_goose_base_url_selects_the_openai_provider() -> None:
    launch = build("goose", AgentSettings(model="qwen3", base_url="http://llm:8080/v1/"))
    assert launch.env["GOOSE_PROVIDER"] == "openai"
    assert launch.env["OPENAI_HOST"] == "http://llm:8080"
    assert launch.env["OPENAI_BASE_PATH"] == "v1/chat/completions"
    assert launch.env["GOOSE_MODEL"] == "qwen3"


def test_goose_unknown_provider_gets_the_generic_key_variable() -> None:
    launch = build("goose", AgentSettings(model="acme/m1", api_key_env="HK"))
    assert launch.env["HAL_API_KEY_AS"] == "GOOSE_PROVIDER__API_KEY"


def test_aider_command_and_environment() -> None:
    settings = AgentSettings(model="openai/qwen3", base_url="http://llm:8080/v1", api_key_env="HK")
    argv = argv_of(launch := build("aider", settings))
    assert argv[:3] == ["aider", "--message-file", PROMPT_FILE]
    for flag in (
        "--yes-always",
        "--no-check-update",
        "--no-analytics",
        "--no-auto-commits",
        "--no-gitignore",
        "--no-pretty",
        "--no-stream",
        "--no-fancy-input",
    ):
        assert flag in argv
    assert argv[argv.index("--input-history-file") + 1].startswith(HOME + "/")
    assert argv[argv.index("--chat-history-file") + 1].startswith(HOME + "/")
    assert argv[-6:] == [
        "--model",
        "openai/qwen3",
        "--openai-api-base",
        "http://llm:8080/v1",
        "--edit-format",
        "diff",
    ]
    assert launch.env["HAL_API_KEY_AS"] == "OPENAI_API_KEY"
    assert launch.env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


def test_aider_seeds_its_price_cache_and_keeps_its_repo_map_out_of_git() -> None:
    launch = build("aider", AgentSettings(model="gpt-4.1"))
    cache = json.loads(launch.files[f"{HOME}/.aider/caches/model_prices_and_context_window.json"])
    # Non-empty (aider refetches an empty cache) and no real model's entry overridden.
    assert cache and "gpt-4.1" not in cache and "openai/gpt-4.1" not in cache
    exclude = launch.files["/hal/workspace/.git/info/exclude"].decode()
    assert exclude.splitlines() == ["/.aider.tags.cache.v*/"]


def test_aider_edit_format_is_diff_only_with_a_base_url_and_extra_args_win() -> None:
    assert "--edit-format" not in argv_of(build("aider", AgentSettings(model="gpt-4.1")))
    settings = AgentSettings(
        model="m", base_url="http://llm/v1", extra_args=("--edit-format", "udiff")
    )
    argv = argv_of(build("aider", settings))
    assert argv[-2:] == ["--edit-format", "udiff"]
    assert argv.index("diff") < argv.index("udiff")


def test_aider_routes_a_bare_model_to_the_openai_wire_api_with_a_base_url() -> None:
    argv = argv_of(build("aider", AgentSettings(model="qwen3", base_url="http://llm/v1")))
    assert argv[argv.index("--model") + 1] == "openai/qwen3"
    argv = argv_of(build("aider", AgentSettings(model="qwen3")))
    assert argv[argv.index("--model") + 1] == "qwen3"


@pytest.mark.parametrize(
    ("model", "var"),
    [("anthropic/claude-x", "ANTHROPIC_API_KEY"), ("gpt-4.1", "OPENAI_API_KEY")],
)
def test_aider_key_variable_follows_the_model(model: str, var: str) -> None:
    launch = build("aider", AgentSettings(model=model, api_key_env="HK"))
    assert launch.env["HAL_API_KEY_AS"] == var
