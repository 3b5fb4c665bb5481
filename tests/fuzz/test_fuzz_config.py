"""Property tests: any config file text and any ``HAL_*`` value gives a config or one clear
:class:`ConfigError`, and an untrusted project file never widens what a task gets."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hal9999.config import ENV_KEYS, AgentConfig, HalConfig, load_config, load_config_sources
from hal9999.errors import ConfigError
from hal9999.providers.limits import effective

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

KNOWN_KEYS = [
    "home", "default_agent", "default_provider", "process_manager", "timeout_s", "network",
    "resources", "agents", "providers", "credentials", "forward_env", "pool", "scheduler",
]  # fmt: skip
NESTED_KEYS = ["memory_mb", "cpus", "pids", "model", "base_url", "api_key_env", "command",
               "extra_args", "claude", "bwrap", "source", "target", "mode", "max_size"]  # fmt: skip

HUGE = "9" * 5000
"""An integer past Python's 4300-digit limit (written as TOML, never built as an int)."""


class Huge:
    """Stands for :data:`HUGE` among the values."""


scalars = st.one_of(
    st.just(Huge()),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["none", "host", "claude", "bwrap", "local", "/etc/passwd", "../x", ""]),
)
keys = st.one_of(st.sampled_from(NESTED_KEYS), st.text(min_size=1, max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=8,
)
tables = st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), keys), values, max_size=6)


def toml_value(value: Any) -> str:
    """Inline TOML for ``value`` (strings as JSON, which TOML basic strings accept)."""
    if isinstance(value, Huge):
        return HUGE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml(table: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items())


def load_or_error(environ: dict[str, str], cwd: Path) -> HalConfig | None:
    """The config, or None after checking the ConfigError is one clear line. A config that
    loads holds no NUL: no path, command or name takes one (a home with one was an internal
    error later in the run)."""
    try:
        config = load_config(environ, cwd)
        assert "\\u0000" not in config.model_dump_json(), config
        return config
    except ConfigError as exc:
        assert exc.message and "\n" not in exc.one_line(), exc.one_line()
        assert "Traceback" not in exc.one_line()
        return None


@FUZZ
@given(user=st.one_of(tables.map(toml), st.text(max_size=200)), project=tables.map(toml))
def test_any_config_file_loads_or_fails_clearly(user: str, project: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home, cwd = Path(tmp, "home"), Path(tmp, "cwd")
        (home / ".config" / "hal9999").mkdir(parents=True)
        cwd.mkdir()
        (home / ".config" / "hal9999" / "config.toml").write_text(user, errors="surrogatepass")
        (cwd / "hal.toml").write_text(project)
        load_or_error({"HOME": str(home)}, cwd)


@FUZZ
@given(env=st.dictionaries(st.sampled_from(sorted(ENV_KEYS)), st.text(max_size=30), max_size=5))
def test_any_hal_variable_loads_or_fails_clearly(env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v.replace("\0", "") for k, v in env.items()}
        load_or_error({"HOME": tmp, **env}, Path(tmp))


WIDENING = ["home", "network", "forward_env", "credentials", "providers", "default_provider",
            "process_manager", "pool", "scheduler"]  # fmt: skip


@FUZZ
@given(project=tables)
def test_an_untrusted_project_file_never_widens(project: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home, cwd = Path(tmp, "home"), Path(tmp, "cwd")
        home.mkdir()
        cwd.mkdir()
        base = load_config({"HOME": str(home)}, cwd)
        (cwd / "hal.toml").write_text(toml(project))
        try:
            config, sources = load_config_sources({"HOME": str(home)}, cwd)
        except ConfigError as exc:
            assert "\n" not in exc.one_line()
            return
        for key in WIDENING:
            assert getattr(config, key) == getattr(base, key), key
        assert config.timeout_s <= base.timeout_s
        ours, theirs = effective(config.resources), effective(base.resources)
        for limit in ("memory_mb", "cpus", "pids", "disk_mb"):  # None: no limit
            mine, before = getattr(ours, limit), getattr(theirs, limit)
            assert before is None or (mine is not None and mine <= before), limit
        defaults = AgentConfig().model_dump(exclude={"model"})
        for agent in config.agents.values():  # only the model of an agent may be set
            assert agent.model_dump(exclude={"model"}) == defaults
        assert sources.project is not None and not sources.project.trusted
