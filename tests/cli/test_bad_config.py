"""A bad config table (``[pool]``, ``[scheduler]``, ``[hive]``, ``[providers.*]``) is one line in
hal's own words naming the table and key, refused before a task exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli import quick_path
from tests.support.hal import Hal, no_sessions, one_error_line, tasks_json

RUN = ("run", "--agent", "true {{prompt_file}}", "x")
PYDANTIC_WORDS = ("Extra inputs", "Input should", "valid string", "pool settings of")


def write_config(hal_env: dict[str, str], text: str) -> None:
    config = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


def in_hals_words(line: str) -> str:
    assert not any(words in line for words in PYDANTIC_WORDS), line
    return line


@pytest.mark.parametrize(
    ("toml", "expected", "hint"),
    [("[pool]\nsize = -1\n", "FILE: [pool] size: unknown key",
      "[pool] of FILE takes: max_size, min_warm"),
     ("[pool.bwrap]\nmax_size = -1\n",
      "FILE: [pool.bwrap] max_size: expected a number at least 0",
      "fix it in [pool.bwrap] of FILE"),
     ("[providers.bwrap]\nbwrap = 5\n", "FILE: [providers.bwrap] bwrap: expected a string",
      "fix it in [providers.bwrap] of FILE"),
     ("[providers.bwrap]\nfoo = 1\n", "FILE: [providers.bwrap] foo: unknown key",
      "[providers.bwrap] of FILE takes: ")],
)  # fmt: skip
def test_a_bad_config_table_is_refused_in_hals_words_before_a_task(
    hal: Hal, hal_env: dict[str, str], toml: str, expected: str, hint: str
) -> None:
    write_config(hal_env, toml)
    out = hal("run", "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 2, out.stderr
    line = in_hals_words(one_error_line(out))
    # The [pool], [scheduler] and [providers.*] errors name the file too: a table alone did
    # not say which of the config files (the user's, ./hal.toml) to fix.
    file = str(Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml"))
    expected, hint = expected.replace("FILE", file), hint.replace("FILE", file)
    assert f"hal: error: {expected}" in line and f"({hint}" in line, line
    assert tasks_json(hal) == [] and no_sessions(hal_env)


def test_a_bad_pool_variable_is_named(hal: Hal) -> None:
    out = hal("run", "--agent", "true {{prompt_file}}", "x", env={"HAL_BWRAP_MIN_WARM": "x"})
    assert out.returncode == 2
    line = one_error_line(out)
    assert "HAL_BWRAP_MIN_WARM: expected a whole number (fix or unset HAL_BWRAP_MIN_WARM)" in line


@pytest.mark.parametrize(
    ("toml", "expected"),
    [("[hive]\nfoo = 1\n",
      "FILE: [hive] foo: unknown key ([hive] of FILE takes: daily_budget_usd"),
     ("[hive]\nrate_per_minute = -1\n",
      "FILE: [hive] rate_per_minute: expected a number at least 0 (fix it in [hive] of FILE;"),
     ("[hive]\nsubtasks_per_day = 0\n",
      "FILE: [hive] subtasks_per_day: expected a number at least 1"),
     ("[hive]\nsubtasks_per_day = 2.5\n",
      "FILE: [hive] subtasks_per_day: expected a whole number")],
)  # fmt: skip
def test_a_bad_hive_setting_is_in_hals_words(
    hal: Hal, hal_env: dict[str, str], toml: str, expected: str
) -> None:
    write_config(hal_env, toml)
    out = hal("vacuum")
    assert out.returncode == 2
    # The file too, as [pool]'s: a table alone did not say which config file to fix.
    file = str(Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml"))
    assert f"hal: error: {expected.replace('FILE', file)}" in in_hals_words(one_error_line(out))


def test_doctor_fails_the_config_on_a_bad_pool_table(hal: Hal, hal_env: dict[str, str]) -> None:
    write_config(hal_env, "[pool]\nsize = -1\n")
    out = hal("doctor", "--json", env={"PATH": quick_path(hal_env)}, timeout=120)
    assert out.returncode == 1, out.stdout
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    file = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    assert not checks["config"]["ok"]
    assert checks["config"]["detail"] == f"{file}: [pool] size: unknown key"


@pytest.mark.parametrize("table", ["providers.nosuch", "pool.bwrapp"])
def test_a_table_of_an_unknown_provider_is_refused(
    hal: Hal, hal_env: dict[str, str], table: str
) -> None:
    write_config(hal_env, f"[{table}]\nmax_size = 1\n")
    out = hal("run", "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 2
    line = one_error_line(out)
    assert f"[{table}]: no provider named" in line and "(providers: bwrap, " in line, line
    assert tasks_json(hal) == [] and no_sessions(hal_env)


def doctor_checks(hal: Hal, hal_env: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = hal("doctor", "--json", env={"PATH": quick_path(hal_env)}, timeout=120)
    return {c["name"]: c for c in json.loads(out.stdout)["checks"]}


def test_doctor_names_an_unknown_provider_table_and_passes_known_ones(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    write_config(hal_env, "[providers.nosuch]\n")
    found = doctor_checks(hal, hal_env)["config"]
    assert not found["ok"] and found["detail"] == "[providers.nosuch]: no provider named 'nosuch'"
    write_config(hal_env, "[providers.docker]\n[pool.local]\nmax_size = 1\n")
    checks = doctor_checks(hal, hal_env)
    assert "config" not in checks and checks["HAL_HOME"]["ok"], checks.get("config")


def test_doctor_checks_the_table_of_a_provider_no_run_uses_today(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    # The runs here use bwrap: a typo in [providers.qemu] was found only the day a run or
    # the daemon's pool first loaded qemu.
    write_config(hal_env, "[providers.qemu]\nboot_timout_s = 9\n")
    found = doctor_checks(hal, hal_env)["config"]
    file = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    expected = f"{file}: [providers.qemu] boot_timout_s: unknown key"
    assert not found["ok"] and found["detail"] == expected, found
    assert found["fix"].startswith(f"[providers.qemu] of {file} takes: "), found
    assert "boot_timeout_s" in found["fix"], found
    # The daemon, which may be asked for any provider, refuses to start on it too.
    out = hal("serve")
    assert out.returncode == 2, out.stderr
    assert expected in one_error_line(out)
    assert not Path(hal_env["HAL_HOME"], "run", "serve.json").exists()


@pytest.mark.parametrize(
    ("toml", "args", "expected"),
    [("[hive]\nkeep_warm = \"yes\"\n", ("vacuum",), "[hive] keep_warm: expected true or false"),
     ("[pool]\nmax_size = \"4\"\n", RUN, "[pool] max_size: expected a whole number"),
     ("[gateway]\nenabled = \"no\"\n", RUN, "gateway.enabled: expected true or false"),
     ("timeout_s = \"30\"\n", RUN, "config.toml: timeout_s: expected a number"),
     ("[resources]\nmemory_mb = true\n", RUN, "resources.memory_mb: expected a whole number"),
     ("[providers.qemu]\nboot_timeout_s = \"9\"\n", ("image", "list"),
      "[providers.qemu] boot_timeout_s: expected a number")],
)  # fmt: skip
def test_text_where_toml_has_a_boolean_or_a_number_is_refused(
    hal: Hal, hal_env: dict[str, str], toml: str, args: tuple[str, ...], expected: str
) -> None:
    write_config(hal_env, toml)
    out = hal(*args)
    assert out.returncode == 2
    assert expected in one_error_line(out)
    assert no_sessions(hal_env)


def test_a_variable_excuses_only_the_file_value_it_replaces(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    """HAL_* variables are text and read as what they spell; a file value they replace is
    not used, so it is not judged, but the file's other values still are."""
    write_config(hal_env, 'timeout_s = "soon"\n[resources]\ncpus = "2"\n')
    out = hal(*RUN, env={"HAL_TIMEOUT": "30", "HAL_MEMORY_MB": "512"})
    assert out.returncode == 2
    assert "config.toml: resources.cpus: expected a number (fix it in " in one_error_line(out)
    write_config(hal_env, 'timeout_s = "soon"\n[resources]\ncpus = 2\n')
    out = hal("task", "list", env={"HAL_TIMEOUT": "30", "HAL_MEMORY_MB": "512"})
    assert out.returncode == 0, out.stderr


def test_doctor_fails_a_gateway_ca_file_that_cannot_be_used(
    hal: Hal, hal_env: dict[str, str], tmp_path: Path
) -> None:
    """Every preset agent's every call is refused through such a file: doctor says so."""
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    for ca_file in (tmp_path / "missing.pem", tmp_path, not_pem):
        write_config(hal_env, f'[gateway]\nca_file = "{ca_file}"\n')
        found = doctor_checks(hal, hal_env)["config"]
        assert not found["ok"], found
        assert found["detail"].startswith(f"[gateway] ca_file {ca_file} cannot be used: ")
        assert "PEM" in found["fix"]


@pytest.mark.parametrize(
    ("toml", "where"),
    [("max_cost_usd = inf", "gateway.max_cost_usd"),
     ("daily_max_cost_usd = inf", "gateway.daily_max_cost_usd"),
     ("requests_per_minute = nan", "gateway.requests_per_minute"),
     ('[gateway.prices."m"]\ninput = inf\noutput = 1', "gateway.prices.m.input")],
)  # fmt: skip
def test_a_gateway_budget_rate_or_price_that_is_not_finite_is_refused(
    hal: Hal, hal_env: dict[str, str], toml: str, where: str
) -> None:
    """As --max-cost inf is: a budget of inf was no budget, a price of inf an infinite cost."""
    write_config(hal_env, f"[gateway]\n{toml}\n")
    out = hal(*RUN)
    assert out.returncode == 2
    assert f"{where}: expected a finite number" in one_error_line(out)
    assert no_sessions(hal_env)


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [("HAL_PROCESS_MANAGER", "tmuxx", "process_manager: unknown process manager 'tmuxx'"),
     ("HAL_PROVIDER", "bwrap,bwarp", "default_provider: no provider named 'bwarp'"),
     ("HAL_AGENT", "claud", "default_agent: unknown agent 'claud'"),
     ("HAL_AGENT", "claude ", "default_agent: agent 'claude ': the preset 'claude' with spaces")],
)  # fmt: skip
def test_an_unknown_default_name_is_blamed_on_its_variable(
    hal: Hal, hal_env: dict[str, str], var: str, value: str, expected: str
) -> None:
    out = hal("run", "--agent", "true {{prompt_file}}", "--provider", "bwrap", "x",
              env={var: value})  # fmt: skip
    assert out.returncode == 2, out.stderr
    line = one_error_line(out)
    assert f"hal: error: {var}: {expected}" in line and f"fix or unset {var})" in line, line
    assert tasks_json(hal) == [] and no_sessions(hal_env)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [("[agents.claud]\nmodel = \"x\"\n", "[agents.claud]: no agent preset named 'claud'"),
     ("[gateway.provider_egress]\nqemmu = [\"a.example\"]\n",
      "[gateway.provider_egress] qemmu: no provider named 'qemmu'"),
     ("default_agent = \"claud\"\n", "config.toml: default_agent: unknown agent 'claud'")],
)  # fmt: skip
def test_a_misspelt_name_in_the_config_is_refused_not_ignored(
    hal: Hal, hal_env: dict[str, str], toml: str, expected: str
) -> None:
    write_config(hal_env, toml)
    out = hal("run", "--agent", "true {{prompt_file}}", "--provider", "bwrap", "x")
    assert out.returncode == 2, out.stderr
    assert expected in one_error_line(out)
    assert tasks_json(hal) == [] and no_sessions(hal_env)
    found = doctor_checks(hal, hal_env)["config"]
    assert not found["ok"] and expected in found["detail"], found


@pytest.mark.parametrize("args", [(), ("--detach",), ("--detach", "--json")])
def test_hal_serve_exits_2_on_a_bad_config_as_every_command_does(
    hal: Hal, hal_env: dict[str, str], args: tuple[str, ...]
) -> None:
    """The daemon refuses a default name nothing registers; a detached start gives the
    daemon's own status, not 1 for "did not start"."""
    out = hal("serve", *args, env={"HAL_PROVIDER": "bwarp"})
    assert out.returncode == 2, out.stderr
    line = one_error_line(out)
    assert "HAL_PROVIDER: default_provider: no provider named 'bwarp'" in line, line
    assert not Path(hal_env["HAL_HOME"], "run", "serve.json").exists()


def test_hal_serve_stop_and_status_exit_2_on_a_bad_config(hal: Hal) -> None:
    for args in (("serve", "--stop"), ("status",)):
        out = hal(*args, env={"HAL_TIMEOUT": "soon"})
        assert out.returncode == 2, (args, out.stderr)
        assert "HAL_TIMEOUT: timeout_s: expected a number" in one_error_line(out)


def test_through_the_daemon_an_unknown_default_name_is_blamed_on_its_origin(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    """The config travels to the daemon as JSON; where each name came from travels with it,
    so the line is the in-process run's, naming the variable or file (never "config")."""
    template = ("--agent", "true {{prompt_file}}")  # the thin client; a preset takes the full
    cases = [({"HAL_PROVIDER": "bwarp"}, template), ({"HAL_PROCESS_MANAGER": "tmuxx"}, template),
             ({"HAL_AGENT": "claud"}, ()), ({"HAL_PROVIDER": ""}, template)]  # fmt: skip
    config = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    assert hal("serve", "--detach").returncode == 0
    try:
        for env, agent in cases:
            if env == {"HAL_PROVIDER": ""}:  # the file's name, the variable unset
                write_config(hal_env, 'default_provider = "bwarp"\n')
            local = hal("run", *agent, "x", env={**env, "HAL_NO_DAEMON": "1"})
            served = hal("run", *agent, "x", env=env)
            assert served.returncode == local.returncode == 2, served.stderr
            line = one_error_line(served)
            assert line == one_error_line(local), (line, local.stderr)
            assert "config:" not in line and "fix it in config" not in line, line
    finally:
        config.unlink(missing_ok=True)
        assert hal("serve", "--stop").returncode == 0
    assert tasks_json(hal) == [] and no_sessions(hal_env)


def test_doctor_names_every_bad_table_and_key_in_one_run(hal: Hal, hal_env: dict[str, str]) -> None:
    """One line each, where doctor said the first and stopped (a run still stops at it)."""
    write_config(hal_env, "[pool]\nsize = -1\n[pool.nosuch]\nmax_size = 1\n"
                          "[providers.bwrap]\nfoo = 1\nbwrap = 5\n"
                          "[providers.qemu]\nboot_timout_s = 9\n"
                          "[hive]\nfoo = 1\nrate_per_minute = -1\n")  # fmt: skip
    quick = {"PATH": quick_path(hal_env)}
    out = hal("doctor", "--json", env=quick, timeout=120)
    assert out.returncode == 1, out.stdout
    file = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    found = [c["detail"] for c in json.loads(out.stdout)["checks"] if c["name"] == "config"]
    expected = ["[pool.nosuch]: no provider named 'nosuch'",
                f"{file}: [providers.bwrap] bwrap: expected a string",
                f"{file}: [providers.bwrap] foo: unknown key",
                f"{file}: [providers.qemu] boot_timout_s: unknown key",
                f"{file}: [hive] foo: unknown key",
                f"{file}: [hive] rate_per_minute: expected a number at least 0",
                f"{file}: [pool] size: unknown key"]  # fmt: skip
    assert sorted(found) == sorted(expected), found
    text = hal("doctor", env=quick, timeout=120)
    assert text.returncode == 1
    lines = [line for line in text.stdout.splitlines() if line.startswith("FAIL  config")]
    assert len(lines) == len(expected), text.stdout
    run = hal(*RUN)
    assert run.returncode == 2
    assert "[pool.nosuch]: no provider named 'nosuch'" in one_error_line(run)
