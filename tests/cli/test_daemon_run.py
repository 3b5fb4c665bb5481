"""The thin ``hal run`` client (``cli/daemon_run.py``): it sends what the full client sends,
takes over only where it can, and imports no models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from tests.support.cli import THIN_RUN_LEAVES_OUT

from hal9999.cli import daemon_run, options
from hal9999.cli.daemon_run import (
    Plan,
    default_config,
    request_body,
    simple_config,
)
from hal9999.config import HalConfig, load_config_sources
from hal9999.runoptions import DEFAULTED, RunArgs, run_wire
from hal9999.server.client import DaemonClient, client_secrets, run_body
from hal9999.server.runtime import DaemonInfo
from hal9999.tasks.request import ConfigNotes, run_request
from hal9999.values import (
    MAX_TIMEOUT_S,
    Name,
    TimeoutSeconds,
    check_value,
)


def test_the_default_config_is_the_models(tmp_path: Path) -> None:
    model = HalConfig.model_validate({"home": str(tmp_path)})
    assert default_config(tmp_path) == model.model_dump(mode="json")
    assert model.timeout_s == default_config(tmp_path)["timeout_s"]


@pytest.fixture
def user(tmp_path: Path) -> dict[str, str]:
    """An environment with a HOME and config dir of its own, no HAL_* settings."""
    return {"HOME": str(tmp_path / "u"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


SIMPLE = [
    {},
    {"HAL_HOME": "/srv/hal/"},
    {"HAL_PROVIDER": "bwrap"},
    {"HAL_AGENT": "x y", "HAL_PROVIDER": "local,bwrap", "HAL_PROCESS_MANAGER": "direct"},
    {"HAL_PROVIDER": "", "HAL_NO_DAEMON": "0", "HAL_HOME": "/a//b"},
]


@pytest.mark.parametrize("extra", SIMPLE)
def test_a_simple_config_is_what_the_loader_gives(
    extra: dict[str, str], user: dict[str, str], tmp_path: Path
) -> None:
    environ = {**user, **extra}
    found = simple_config(environ, tmp_path)
    config, sources = load_config_sources(environ, tmp_path)
    assert found is not None
    assert found[0] == config.model_dump(mode="json")
    assert found[1] == sources.env
    assert "config: " + (", ".join(found[1]) or "defaults") == sources.describe()


@pytest.mark.parametrize(
    "extra",
    [
        {"HAL_TIMEOUT": "3600"},  # any variable it does not understand
        {"HAL_LOG_LEVEL": "info"},
        {"HAL_BWRAP_MAX_SIZE": "3"},
        {"HAL_AGENT": "  "},  # an error the full path words
        {"HAL_PROVIDER": "bwräp"},
        {"HAL_HOME": "relative"},
        {"HAL_HOME": "~/x"},
        {"HOME": "~nobody"},
    ],
)
def test_anything_else_takes_the_full_path(
    extra: dict[str, str], user: dict[str, str], tmp_path: Path
) -> None:
    assert simple_config({**user, **extra}, tmp_path) is None


def test_a_config_file_takes_the_full_path(user: dict[str, str], tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "hal.toml").write_text("timeout_s = 60\n")
    assert simple_config(user, project) is None
    assert simple_config(user, tmp_path) is not None
    config = Path(user["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("")
    assert simple_config(user, tmp_path) is None


def test_option_types_accept_what_the_field_types_accept() -> None:
    for value in ("1", "2.5", "3600", str(MAX_TIMEOUT_S)):
        got = options.TIMEOUT.convert(value, None, None)
        assert got == check_value(TimeoutSeconds, float(value), "seconds")
        assert type(got) is float
    for bad in ("0", "0.5", "inf", "nan", "-1", str(MAX_TIMEOUT_S + 1)):
        with pytest.raises(click.BadParameter) as refused:
            options.TIMEOUT.convert(bad, None, None)
        with pytest.raises(Exception) as model:
            check_value(TimeoutSeconds, float(bad), "seconds")
        assert str(model.value).split(": ", 1)[-1] in refused.value.message
    assert options.NAME.convert(" a ", None, None) == check_value(Name, " a ", "name")
    with pytest.raises(click.BadParameter, match="must not be empty"):
        options.NAME.convert(" ", None, None)


def _args(**given: Any) -> RunArgs:
    return RunArgs.parsed("fix it", **given)


@pytest.mark.parametrize(
    ("given", "extra"),
    [
        ({"agent": "true {{prompt_file}}"}, {}),
        ({"agent": "a {{prompt}}", "provider": "local,bwrap", "timeout": 5.0}, {}),
        ({"repo": "sub", "ref": "main", "priority": 3, "retries": 2}, {"HAL_PROVIDER": "local"}),
        (
            {"env": ("FOO", "BAR=1"), "secret": ("TOKEN",), "max_cost": 0.5, "max_tokens": 9},
            {"HAL_AGENT": "t {{prompt_file}}", "HAL_PROCESS_MANAGER": "direct"},
        ),
    ],
)
def test_the_body_is_the_full_clients(
    given: dict[str, Any],
    extra: dict[str, str],
    user: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {**user, "HAL_HOME": str(tmp_path / "home"), "FOO": "f", "TOKEN": "t0k3n"} | extra
    found = simple_config(environ, tmp_path)
    assert found is not None
    config_json, applied = found
    args = _args(**given)
    agent = args.agent or config_json["default_agent"]
    info = DaemonInfo(pid=1, socket=str(tmp_path / "s"), port=0, started_at=0.0)
    client = DaemonClient(info, "t")
    names, values = daemon_run.parse_env_option(args.env)
    secret_names, _ = daemon_run.parse_env_option(args.secret)
    plan = Plan(client, config_json, applied, agent)
    thin = request_body(args, plan, environ, (names, values), secret_names)

    config, sources = load_config_sources(environ, tmp_path)
    request = run_wire(
        args, {key: getattr(config, key) for _, key in DEFAULTED}, agent=agent,
        env_names=names, env=values, literal_env=sorted(values), secret_names=secret_names,
        cwd=str(tmp_path), config=config, config_files=list(sources.files),
        config_sources=sources.notes(),  # as run_full's request carries them
    )  # fmt: skip
    full = run_body(request, client_secrets(config, request, environ))
    full["upstream_keys"] = {}  # a template agent names no API key
    assert json.loads(json.dumps(thin)) == json.loads(json.dumps(full))
    notes = thin["config_sources"]
    assert notes == {"describe": sources.describe(), "notice": None}
    run_request(thin, HalConfig(home=tmp_path / "home"))
    ConfigNotes.model_validate(notes)


NAMED = {"agent": "a {{prompt}}", "provider": "local", "process_manager": "direct"}


def test_a_daemon_refuses_config_notes_of_the_wrong_shape() -> None:
    from hal9999.errors import UsageError

    for notes in ({"describe": 1}, {"describe": "x", "more": 1}, "config: x"):
        with pytest.raises(UsageError, match="config_sources"):
            run_request({"config_sources": notes, **NAMED})


def test_a_daemon_refuses_a_config_origin_of_the_wrong_shape() -> None:
    from hal9999.errors import UsageError

    run_request({"config_origin": [{"key": ["default_agent"], "source": "HAL_AGENT"}], **NAMED})
    for origin in ({"default_agent": "HAL_AGENT"}, [{"key": [], "source": "x"}],
                   [{"key": ["a"], "source": ""}], [{"key": "a", "source": "x"}],
                   [{"key": ["a"], "source": "x", "more": 1}]):  # fmt: skip
        with pytest.raises(UsageError, match="config_origin"):
            run_request({"config_origin": origin, **NAMED})


def test_the_thin_path_imports_no_models_and_no_daemon_side_modules() -> None:
    # Its whole point is a short start: no models, no event loop, and none of what
    # only the daemon uses (making the token: secrets; a socket in the temp dir for a long
    # home path: tempfile, hashlib). Counted in a fresh interpreter.
    import subprocess
    import sys

    code = (
        "import sys, hal9999.cli.run_argv, hal9999.cli.daemon_run, hal9999.server.client, "
        "hal9999.cli.notices, hal9999.cli.prompt; "
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    assert "hal9999.cli.daemon_run" in done.stdout.split()  # it did import the modules
    # Nor click: a run the entry point parsed itself prints without it (cli/echo.py); nor
    # dataclasses, which brings inspect: home.py and runtime.py use NamedTuples.
    unused = {"pydantic", "asyncio", "sqlite3", "httpx", "secrets", "tempfile", "hashlib", "click"}
    unused |= {"dataclasses", "inspect", "socket"}  # socket.py: builds its enums
    unused |= THIN_RUN_LEAVES_OUT
    assert loaded & unused == set(), sorted(loaded & unused)
