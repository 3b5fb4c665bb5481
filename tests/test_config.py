"""Layered configuration (defaults < user file < hal.toml < HAL_* env) and the home layout."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hal9999.agents.base import AgentSettings
from hal9999.config import AgentConfig, CredentialFile, GatewayConfig, HalConfig, load_config
from hal9999.errors import ConfigError, UsageError
from hal9999.home import HalPaths
from hal9999.spec import Resources
from hal9999.trust import TrustStore


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    home = tmp_path / "user"
    home.mkdir()
    return home


@pytest.fixture
def project(tmp_path: Path) -> Path:
    cwd = tmp_path / "project"
    cwd.mkdir()
    return cwd


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def user_file(user_home: Path) -> Path:
    return user_home / ".config" / "hal9999" / "config.toml"


def trusted(user_home: Path, path: Path) -> Path:
    """Record ``path`` as trusted by the user (what ``hal trust`` does): applied in full."""
    TrustStore.for_config_dir(user_file(user_home).parent).trust(path, path.read_bytes())
    return path


def test_defaults(user_home: Path, project: Path) -> None:
    config = load_config({"HOME": str(user_home)}, project)
    assert config == HalConfig(home=user_home / ".local" / "share" / "hal9999")
    assert config.default_agent == "claude"
    assert config.default_provider == "bwrap"
    assert config.process_manager == "tmux"
    assert config.timeout_s == 3600
    assert config.network == "none"
    assert config.resources == Resources()


def test_xdg_directories_are_honoured(tmp_path: Path, user_home: Path, project: Path) -> None:
    data, conf = tmp_path / "data", tmp_path / "conf"
    write(conf / "hal9999" / "config.toml", 'default_agent = "codex"\n')
    environ = {"HOME": str(user_home), "XDG_DATA_HOME": str(data), "XDG_CONFIG_HOME": str(conf)}
    config = load_config(environ, project)
    assert config.home == data / "hal9999"
    assert config.default_agent == "codex"


def test_relative_xdg_values_are_ignored(user_home: Path, project: Path) -> None:
    config = load_config({"HOME": str(user_home), "XDG_DATA_HOME": "rel/data"}, project)
    assert config.home == user_home / ".local" / "share" / "hal9999"


def test_precedence_file_then_project_then_env(user_home: Path, project: Path) -> None:
    write(
        user_file(user_home),
        """
        default_agent = "codex"
        timeout_s = 100
        forward_env = ["A"]
        [resources]
        pids = 100
        cpus = 1.0
        [agents.claude]
        model = "from-user"
        base_url = "https://user.example"
        """,
    )
    trusted(
        user_home,
        write(
            project / "hal.toml",
            """
            timeout_s = 200
            forward_env = ["B"]
            [agents.claude]
            model = "from-project"
            """,
        ),
    )
    environ = {"HOME": str(user_home), "HAL_TIMEOUT": "300", "HAL_MEMORY_MB": "512"}
    config = load_config(environ, project)
    assert config.default_agent == "codex"  # only the user file sets it
    assert config.timeout_s == 300  # env beats both files
    assert config.forward_env == ["B"]  # lists are replaced, not merged
    assert config.resources == Resources(cpus=1.0, memory_mb=512, pids=100)  # tables merge
    assert config.agents["claude"] == AgentConfig(
        model="from-project", base_url="https://user.example"
    )


def test_every_hal_variable(tmp_path: Path, user_home: Path, project: Path) -> None:
    environ = {
        "HOME": str(user_home),
        "HAL_HOME": str(tmp_path / "halhome"),
        "HAL_AGENT": "aider",
        "HAL_PROVIDER": "local",
        "HAL_PROCESS_MANAGER": "direct",
        "HAL_TIMEOUT": "12.5",
        "HAL_NETWORK": "host",
        "HAL_MEMORY_MB": "2048",
        "HAL_CPUS": "1.5",
        "HAL_PIDS": "256",
    }
    config = load_config(environ, project)
    assert config.home == tmp_path / "halhome"
    assert (config.default_agent, config.default_provider) == ("aider", "local")
    assert config.process_manager == "direct"
    assert config.timeout_s == 12.5
    assert config.network == "host"
    assert config.resources == Resources(cpus=1.5, memory_mb=2048, pids=256)


def test_empty_variables_count_as_unset(user_home: Path, project: Path) -> None:
    write(user_file(user_home), 'default_provider = "local"\n')
    config = load_config({"HOME": str(user_home), "HAL_PROVIDER": "", "HAL_TIMEOUT": ""}, project)
    assert config.default_provider == "local"
    assert config.timeout_s == HalConfig.model_fields["timeout_s"].default


def test_an_empty_hal_agent_is_refused(user_home: Path, project: Path) -> None:
    """``HAL_AGENT=$AGENT`` with AGENT unset ran the default agent (claude, on its account)
    without a word: most likely a mistake, so one line says so and how to fix it."""
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home), "HAL_AGENT": ""}, project)
    assert info.value.message == "HAL_AGENT is set but empty"
    assert "unset HAL_AGENT" in (info.value.hint or "")


def test_an_empty_hal_home_is_refused(user_home: Path, project: Path) -> None:
    """``HAL_HOME=$DIR`` with DIR unset ran in the user's own home (its daemon, its
    credentials) where a script meant a private one."""
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home), "HAL_HOME": ""}, project)
    assert info.value.message == "HAL_HOME is set but empty"
    assert "`unset HAL_HOME`" in (info.value.hint or "")


@pytest.mark.parametrize("key", ["max_tokens", "daily_max_tokens"])
def test_a_token_budget_past_any_real_one_is_refused(
    user_home: Path, project: Path, key: str
) -> None:
    write(user_file(user_home), f"[gateway]\n{key} = 99999999999999999999\n")
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home)}, project)
    assert f"gateway.{key}: " in info.value.message and "1000000000000" in info.value.message


def test_home_from_file_expands_user_and_relative_paths(
    user_home: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(user_home))
    trusted(user_home, write(project / "hal.toml", 'home = "~/halstuff"\n'))
    assert load_config({"HOME": str(user_home)}, project).home == user_home / "halstuff"
    trusted(user_home, write(project / "hal.toml", 'home = "state"\n'))
    assert load_config({"HOME": str(user_home)}, project).home == (project / "state").resolve()


@pytest.mark.parametrize(
    ("value", "problem"),
    [("", "must not be empty"), (" ", "must not be empty"),
     (" /srv/hal", "has spaces or tabs around the path"),
     ("/srv/hal\t", "has spaces or tabs around the path")],
)  # fmt: skip
def test_a_blank_or_space_padded_home_is_refused(
    user_home: Path, project: Path, value: str, problem: str
) -> None:
    # "" was the current directory (hal.db in a repository), " x" a directory " x" there.
    write(user_file(user_home), f"home = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=f"config.toml: home: {problem}"):
        load_config({"HOME": str(user_home)}, project)
    if value:  # an empty variable means unset
        with pytest.raises(ConfigError, match=f"^HAL_HOME: home: {problem}"):
            load_config({"HOME": str(user_home), "HAL_HOME": value}, project)


@pytest.mark.parametrize("which", ["user", "project"])
def test_a_config_file_that_is_a_broken_link_is_refused_not_skipped(
    user_home: Path, project: Path, which: str
) -> None:
    # A dotfiles link whose target is gone read as "no config": every setting dropped silently.
    link = user_file(user_home) if which == "user" else project / "hal.toml"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(user_home / "dotfiles" / "hal.toml")
    with pytest.raises(ConfigError, match=r"a link to '.*dotfiles/hal\.toml', which does not"):
        load_config({"HOME": str(user_home)}, project)


def test_a_byte_order_mark_is_named(user_home: Path, project: Path) -> None:
    # TOML's own words were "Invalid statement (at line 1, column 1)", of an invisible byte.
    user_file(user_home).parent.mkdir(parents=True)
    user_file(user_home).write_bytes(b"\xef\xbb\xbftimeout_s = 30\n")
    with pytest.raises(ConfigError, match=r"config\.toml: starts with a byte-order mark") as info:
        load_config({"HOME": str(user_home)}, project)
    assert "without a BOM" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [('[[credentials]]\nsource = ""\ntarget = ".x"\n', "credentials.0.source: must not be empty"),
     ('[gateway]\nca_file = " /etc/ca.pem"\n',
      "gateway.ca_file: has spaces or tabs around the path"),
     ('[[credentials]]\nsource = "/a"\ntarget = ".x"\n'
      '[[credentials]]\nsource = "/b"\ntarget = "/home/hal/./.x"\n',
      "credentials: entries 0 and 1 both have target ~/.x")],
)  # fmt: skip
def test_an_empty_path_or_a_target_given_twice_is_refused(
    user_home: Path, project: Path, toml: str, expected: str
) -> None:
    # source = "" read the current directory; two files for one target: the later one won.
    write(user_file(user_home), toml)
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home)}, project)
    assert info.value.message.endswith(f"config.toml: {expected}"), info.value.message


def test_invalid_toml_names_the_file(user_home: Path, project: Path) -> None:
    write(project / "hal.toml", "timeout_s = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home)}, project)
    assert info.value.message.startswith("hal.toml: invalid TOML")
    assert "line 1" in info.value.message


def test_bad_value_names_file_key_and_expectation(user_home: Path, project: Path) -> None:
    write(project / "hal.toml", 'timeout_s = "soon"\n')
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home)}, project)
    assert info.value.message == "hal.toml: timeout_s: expected a number"
    assert info.value.code == "config_invalid"


def test_bad_env_value_names_the_variable(user_home: Path, project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home), "HAL_NETWORK": "wifi"}, project)
    assert info.value.message == "HAL_NETWORK: network: expected one of 'none' or 'host'"


def test_env_value_overriding_a_bad_file_value_is_fine(user_home: Path, project: Path) -> None:
    write(project / "hal.toml", 'timeout_s = "soon"\n')
    config = load_config({"HOME": str(user_home), "HAL_TIMEOUT": "5"}, project)
    assert config.timeout_s == 5


def test_unknown_nested_key_names_the_user_file(user_home: Path, project: Path) -> None:
    path = write(user_file(user_home), '[agents.claude]\nmodle = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home)}, project)
    assert info.value.message == f"{path}: agents.claude.modle: unknown key"


def test_a_secret_that_is_not_a_variable_name_is_refused(user_home: Path, project: Path) -> None:
    path = write(user_file(user_home), 'secrets = ["GH_TOKEN", "1BAD"]\n')
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home)}, project)
    assert info.value.message == (
        f"{path}: secrets.1: expected a variable name: ASCII letters, digits and '_'"
    )


def test_several_problems_are_all_kept(user_home: Path, project: Path) -> None:
    text = 'timeout_s = -1\nnetwork = "lan"\n[resources]\npids = "many"\n'
    trusted(user_home, write(project / "hal.toml", text))
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home)}, project)
    assert "(and 2 more)" in info.value.message
    assert sorted(info.value.details["problems"]) == [
        "hal.toml: network: expected one of 'none' or 'host'",
        "hal.toml: resources.pids: expected a whole number",
        "hal.toml: timeout_s: expected a number greater than 0",
    ]


def test_credentials_and_agents_from_file(user_home: Path, project: Path) -> None:
    config_file = write(
        project / "hal.toml",
        """
        [[credentials]]
        source = "/etc/creds.json"
        target = ".claude/.credentials.json"

        [[credentials]]
        source = "/etc/other"
        target = "/home/hal/other"
        mode = 0o644

        [agents.codex]
        api_key_env = "OPENAI_API_KEY"
        extra_args = ["--full-auto"]
        """,
    )
    trusted(user_home, config_file)
    config = load_config({"HOME": str(user_home)}, project)
    assert config.credentials == [
        CredentialFile(source=Path("/etc/creds.json"), target=".claude/.credentials.json"),
        CredentialFile(source=Path("/etc/other"), target="/home/hal/other", mode=0o644),
    ]
    assert config.credentials[0].mode == 0o600
    assert config.agent_settings("codex") == AgentSettings(
        api_key_env="OPENAI_API_KEY", extra_args=("--full-auto",)
    )
    assert config.agent_settings("unconfigured") == AgentSettings()


def test_credential_mode_is_bounded() -> None:
    with pytest.raises(ValueError):
        CredentialFile(source=Path("/x"), target="y", mode=0o1000)


def test_agent_config_to_settings() -> None:
    url = "https://u.example/v1"
    agent = AgentConfig(model="m", base_url=url, api_key_env="K", command="c", extra_args=["-v"])
    assert agent.to_settings() == AgentSettings(
        model="m", base_url=url, api_key_env="K", command="c", extra_args=("-v",)
    )


def test_hal_paths_layout_and_ensure(tmp_path: Path) -> None:
    paths = HalPaths(tmp_path / "home")
    assert paths.db == tmp_path / "home" / "hal.db"
    assert paths.session("abc") == tmp_path / "home" / "sessions" / "abc"
    assert paths.events_path("abc") == paths.session("abc") / "events.jsonl"
    assert paths.sandbox_state("bwrap") == tmp_path / "home" / "sandboxes" / "bwrap"
    assert paths.run == tmp_path / "home" / "run"
    assert paths.ensure() is paths
    for directory in (paths.home, paths.sessions, paths.sandboxes, paths.run):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    session = paths.ensure_session("abc")
    assert session.is_dir() and stat.S_IMODE(session.stat().st_mode) == 0o700
    assert paths.ensure_sandbox_state("bwrap").is_dir()


@pytest.mark.parametrize("bad", ["..", "../etc", "a/b", "", ".hidden"])
def test_hal_paths_refuse_names_that_escape(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="invalid task id"):
        HalPaths(tmp_path).session(bad)


def test_a_bad_key_is_blamed_on_the_file_that_wrote_it_not_a_later_one(
    user_home: Path, project: Path
) -> None:
    """A table two files add to: the unknown key is the user file's, though the project
    file (read later) also has the table; so is a text number a variable merges beside."""
    path = write(user_file(user_home), '[agents.claude]\nmodle = "x"\n')
    trusted(user_home, write(project / "hal.toml", '[agents.claude]\nmodel = "y"\n'))
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home)}, project)
    assert info.value.message == f"{path}: agents.claude.modle: unknown key"
    write(user_file(user_home), '[resources]\ncpus = "2"\n')
    with pytest.raises(ConfigError) as typed:
        load_config({"HOME": str(user_home), "HAL_MEMORY_MB": "512"}, project)
    assert typed.value.message == f"{path}: resources.cpus: expected a number"


def test_the_daemon_refuses_a_bad_pool_variable_at_start(tmp_path: Path) -> None:
    # Read only when a task ran on the provider, it used to let `hal serve` start silently.
    from hal9999.server.daemon import Daemon

    config = HalConfig(home=tmp_path / "home")
    with pytest.raises(ConfigError, match="HAL_BWRAP_MIN_WARM: expected a number at least 0"):
        Daemon(config, {"HAL_BWRAP_MIN_WARM": "-1"})


@pytest.mark.parametrize("where", ["HAL_HOME", "user file"])
def test_a_home_relative_to_the_current_directory_is_refused(
    user_home: Path, project: Path, where: str
) -> None:
    """``HAL_HOME=home hal run`` recorded its task under ./home, and ``hal task list`` from
    another directory found (and made) another home there: "no tasks yet". A home that would
    mean another place from each directory is refused in one line saying how; a project
    ``hal.toml``'s stays relative to its own directory."""
    environ = {"HOME": str(user_home)}
    if where == "HAL_HOME":
        environ["HAL_HOME"] = "home"
    else:
        write(user_file(user_home), 'home = "home"\n')
    with pytest.raises(ConfigError) as info:
        load_config(environ, project)
    source = "HAL_HOME" if where == "HAL_HOME" else str(user_file(user_home))
    assert info.value.message.startswith(f"{source}: home: the relative path home"), info.value
    assert info.value.hint == f"make it absolute, e.g. {project / 'home'}"
    assert not (project / "home").exists()
    environ["HAL_HOME"] = str(project / "home")
    assert load_config(environ, project).home == project / "home"


def test_the_gateway_default_is_a_validated_default_config(tmp_path: Path) -> None:
    # HalConfig's default `gateway` is built without validation (its validator is not built
    # at import): it must be what validating no `[gateway]` gives, field for field,
    # and no config may share its lists with another.
    validated = GatewayConfig()
    first, second = HalConfig(home=tmp_path), HalConfig(home=tmp_path)
    assert first.gateway == validated
    assert first.gateway.model_dump() == validated.model_dump()
    assert first.gateway.model_fields_set == set()
    first.gateway.egress.append("example.org")
    assert second.gateway.egress == [] and GatewayConfig().egress == []
    assert HalConfig.model_validate({"home": tmp_path, "gateway": {}}).gateway == validated


@pytest.mark.parametrize(("text", "where"), [
    ('home = "/tmp/\\u0000x"\n', "home"),
    ('[resources]\ncpus = 1\n[egress]\nallow = ["a.example", "b\\u0000.example"]\n',
     "egress.allow.1"),
    ('"a\\u0000b" = 1\n', "a\\u0000b"),
])  # fmt: skip
def test_a_nul_anywhere_in_a_config_file_is_named(
    user_home: Path, project: Path, text: str, where: str
) -> None:
    # TOML writes one as \u0000; a home holding one was an internal error deep in the run
    # (ValueError: embedded null byte, from os.statvfs).
    write(user_file(user_home), text)
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home)}, project)
    label = user_file(user_home)
    assert info.value.message == f"{label}: {where}: contains a NUL character (\\u0000)"
    assert info.value.hint == f"remove it from {user_file(user_home)}"


def test_a_number_too_long_to_read_is_named(user_home: Path, project: Path) -> None:
    # tomllib's int() of 5,000 digits raised a bare ValueError: an internal error.
    write(project / "hal.toml", "timeout_s = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config({"HOME": str(user_home)}, project)
    assert info.value.message == "hal.toml: holds a number too long to read (more than 4300 digits)"
