"""The forges' settings (``[forges.github]``, ``[forges.gitlab]`` in the config): where each
forge is and which host variable holds its token (the token itself is never in a config)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hal9999.config import HalConfig
from hal9999.errors import ConfigError
from hal9999.values import EnvName, describe, setting_hint, url_problem, with_others

ForgeKind = Literal["github", "gitlab"]
"""The forges hal speaks to."""
KINDS: tuple[ForgeKind, ...] = ("github", "gitlab")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _address(value: str) -> str:
    problem = url_problem(value)
    if problem is not None:
        raise ValueError(f"{value!r} {problem}")
    parts = urlsplit(value)
    # A token crosses this address: only a loopback one (a test's, a local tunnel's) may be
    # plain http.
    if parts.scheme != "https" and parts.hostname not in _LOOPBACK:
        raise ValueError(f"{value!r} is not https:// (a token would cross the network in clear)")
    return value.rstrip("/")


class ForgeSettings(BaseModel):
    """``[forges.<kind>]``: one forge's addresses and token variables."""

    model_config = ConfigDict(extra="forbid", strict=True)

    base_url: str | None = None
    """The forge's web address (issue URLs start with it): https://github.com,
    https://gitlab.com, or a self-hosted one such as https://gitlab.example.com."""
    api_url: str | None = None
    """Its REST API's address (default: https://api.github.com for github.com,
    ``<base_url>/api/v3`` for GitHub Enterprise, ``<base_url>/api/v4`` for GitLab)."""
    token_env: list[EnvName] = Field(default_factory=list)
    """Host variables tried in order for the token (default: ``GH_TOKEN``, ``GITHUB_TOKEN``
    for GitHub; ``GITLAB_TOKEN`` for GitLab). Read on the host only."""
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    """Seconds one API request may take."""
    rate_limit_wait_s: float = Field(default=60.0, ge=0, le=3600)
    """The longest hal waits for a rate limit to lift before it reports it."""

    @field_validator("base_url", "api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)


_DEFAULT_BASE = {"github": "https://github.com", "gitlab": "https://gitlab.com"}
_DEFAULT_TOKENS = {"github": ["GH_TOKEN", "GITHUB_TOKEN"], "gitlab": ["GITLAB_TOKEN"]}


class Forge(BaseModel):
    """One forge's settings with every default applied."""

    model_config = ConfigDict(frozen=True)

    kind: ForgeKind
    base_url: str
    api_url: str
    token_env: tuple[str, ...]
    timeout_s: float
    rate_limit_wait_s: float

    def token(self, environ: Mapping[str, str]) -> tuple[str, str] | None:
        """The first set token variable's name and value in ``environ`` (None: none set)."""
        for name in self.token_env:
            value = environ.get(name)
            if value:
                return name, value
        return None


def forge_settings(config: HalConfig, kind: ForgeKind) -> Forge:
    """The validated settings of forge ``kind`` in ``config``."""
    unknown = [k for k in config.forges if k not in KINDS]
    if unknown:
        raise ConfigError(
            f"[forges.{unknown[0]}] is not a forge hal knows",
            hint="use [forges.github] or [forges.gitlab]",
        )
    try:
        given = ForgeSettings.model_validate(config.forges.get(kind, {}))
    except ValidationError as exc:
        raise with_others([_invalid(kind, err, config) for err in exc.errors()]) from exc
    base = given.base_url or _DEFAULT_BASE[kind]
    api = given.api_url
    if api is None:
        if kind == "github":
            api = "https://api.github.com" if base == _DEFAULT_BASE[kind] else f"{base}/api/v3"
        else:
            api = f"{base}/api/v4"
    return Forge(
        kind=kind,
        base_url=base,
        api_url=api,
        token_env=tuple(given.token_env or _DEFAULT_TOKENS[kind]),
        timeout_s=given.timeout_s,
        rate_limit_wait_s=given.rate_limit_wait_s,
    )


def shell_tokens(config: HalConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """Each forge's token this shell holds, by its variable's name (what a client sends a
    daemon for an ``--issue`` run, as the API key goes: the daemon's environment need not
    hold it)."""
    found: dict[str, str] = {}
    for kind in KINDS:
        token = forge_settings(config, kind).token(environ)
        if token is not None:
            found[token[0]] = token[1]
    return found


def check_forges(config: HalConfig) -> None:
    """Refuse a bad ``[forges.*]`` table of ``config``: an unknown forge, a bad key."""
    for kind in KINDS:
        forge_settings(config, kind)


def _invalid(kind: str, err: Any, config: HalConfig) -> ConfigError:
    where = ".".join(str(p) for p in err["loc"])
    # The file that set it too: a table alone does not say which config file to fix.
    from hal9999.config_origin import source_at  # an error's path only

    found = source_at(("forges", kind, *map(str, err["loc"])), config._origin)
    known = found != "config"
    table = f"[forges.{kind}]"
    place, prefix = (f"{table} of {found}", f"{found}: ") if known else (table, "")
    hint = (
        setting_hint(err, place, ForgeSettings.model_fields)
        if err["type"] == "extra_forbidden"
        else f"fix it in {place}; see docs/forges.md"
    )
    return ConfigError(f"{prefix}{table} {where}: {describe(err)}", hint=hint)
