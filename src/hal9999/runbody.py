"""The JSON body of the daemon's ``POST /v1/tasks``, checked field by field before use.

Its own module: only the daemon's API reads it, so an in-process ``hal run`` never defines
these models (dear to build). The field rules are :mod:`hal9999.values`'s.
"""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from hal9999.errors import UsageError
from hal9999.values import (
    MAX_TOKENS,
    Dollars,
    EgressHost,
    EnvName,
    Name,
    TimeoutSeconds,
    describe,
)


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\0" in value:
        raise ValueError("must not contain a NUL byte")
    return value


PathText = Annotated[str | None, AfterValidator(_no_nul)]
"""A path or URL as text (no NUL: it could never name a file)."""
EnvValue = Annotated[str, AfterValidator(_no_nul)]
"""A variable's value (no NUL: no environment holds one; the exec that started the agent
raised, and the task was reported "interrupted" as if hal had died)."""


class ConfigNotes(BaseModel):
    """Which config a ``hal run`` applied, for the task's events (``config_sources``)."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    describe: str = Field(max_length=65536)
    """``config: <files and variables>`` (or ``config: defaults``): an ``info`` message."""
    notice: str | None = Field(default=None, max_length=65536)
    """What of ``./hal.toml`` was ignored, when anything was: a ``warning`` message."""


class ConfigOrigin(BaseModel):
    """Which file or ``HAL_*`` variable set one key of a run's ``config``
    (``config_origin``), so the daemon's errors name it as the caller's own would."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    key: list[Annotated[str, Field(max_length=1024)]] = Field(min_length=1, max_length=32)
    """The key's path in the config, e.g. ``["default_provider"]``."""
    source: str = Field(min_length=1, max_length=4096)
    """A config file's path or a ``HAL_*`` variable's name."""


class RunBody(BaseModel):
    """The JSON body of ``POST /v1/tasks``: every field of the right type before it is used."""

    model_config = ConfigDict(extra="ignore", strict=True, defer_build=True)

    prompt: str = ""
    """The prompt (checked for emptiness by the task service)."""
    repo: PathText = None
    """Repository path or URL."""
    ref: PathText = None
    """Branch, tag or commit."""
    cwd: PathText = None
    """The caller's directory, which a relative ``repo`` is relative to."""
    agent: Name | None = None
    """Agent; the daemon's default when unset (never when empty: that is a mistake)."""
    provider: Name | None = None
    """Provider list; the daemon's default when unset."""
    process_manager: Name | None = None
    """Process manager; the daemon's default when unset."""
    timeout_s: Annotated[TimeoutSeconds, Field(strict=False)] | None = None
    """Time limit in seconds."""
    env_names: list[EnvName] | None = None
    """Forwarded variable names."""
    env: dict[EnvName, EnvValue] | None = None
    """Variable values the caller sends (the agent's environment)."""
    upstream_keys: dict[EnvName, EnvValue] | None = None
    """The agent's API key from the caller's shell, by variable name: read only by the LLM
    gateway's route, never put in the agent's environment (unless it goes direct)."""
    secret_names: list[EnvName] | None = None
    """Variables marked secret."""
    literal_env: list[EnvName] | None = None
    """Variables given as literal values (configuration)."""
    priority: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)
    """Queue order."""
    retries: int | None = Field(default=None, ge=0, le=100)
    """Retries of an agent failure."""
    config_sources: ConfigNotes | None = None
    """Which config the caller applied, recorded in the task's events when it is created
    (both clients send it: written by the client after the post, it could follow a fast
    run's ``task_end``)."""
    egress: list[EgressHost] | None = None
    """Hosts this task may reach too (``--egress``); a string was iterated: ``"abc"`` was
    the hosts a, b and c."""
    egress_only: list[EgressHost] | None = None
    """The task's narrowing egress list (``--egress-only``)."""
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    """The task's token budget at the LLM gateway (``--max-tokens``)."""
    max_cost_usd: Dollars | None = None
    """The task's cost budget in dollars at the LLM gateway (``--max-cost``)."""
    config_files: list[str] | None = None
    """The config files the caller read, for the task's record."""
    config: dict[str, Any] | None = None
    """The caller's resolved settings (checked as :class:`HalConfig` by the daemon)."""
    config_origin: list[ConfigOrigin] | None = Field(default=None, max_length=100_000)
    """Which file or variable set each key of ``config``, for the errors that name it."""


def check_run_body(body: Mapping[str, Any]) -> None:
    """Refuse a run request body with a field of the wrong type or value (a
    :class:`UsageError` naming the field; values are never echoed)."""
    try:
        RunBody.model_validate(dict(body))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"{where}: {describe(err)}", hint=f"fix {where} in the request") from exc
