"""What ``hal run`` (or the daemon's API, or a hive) asks the task service for: the one
model of a run request, and the small rules about it that hold before any task exists (its
providers, a fresh task id).

A request reaches this model once, where it is executed: the daemon validates the JSON body
of ``POST /v1/tasks`` with :func:`run_request`, the local task API validates the wire
dictionary ``hal run`` built from its option table (:mod:`hal9999.runoptions`), and a hive
builds one from its own values. Field names are the wire's (``env``, ``literal_env``) where
they differ from the attribute's.
"""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text.
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from hal9999.config import AgentConfig, HalConfig
from hal9999.errors import ConfigError, UsageError
from hal9999.values import (
    MAX_TOKENS,
    Dollars,
    EgressHost,
    EnvName,
    Name,
    TimeoutSeconds,
    describe,
)

if TYPE_CHECKING:
    from hal9999.events.models import Event

_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\0" in value:
        raise ValueError("must not contain a NUL byte")
    return value


def _path_no_nul(value: Path) -> Path:
    _no_nul(str(value))
    return value


PathText = Annotated[str | None, AfterValidator(_no_nul)]
"""A path or URL as text (no NUL: it could never name a file)."""
EnvValue = Annotated[str, AfterValidator(_no_nul)]
"""A variable's value (no NUL: no environment holds one; the exec that started the agent
raised, and the task was reported "interrupted" as if hal had died)."""


def _empty_list() -> list[str]:
    return []


def _empty_dict() -> dict[str, str]:
    return {}


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


WIRE = "wire"
"""Context key: the data is a wire body (a caller's JSON), not a hal-built request."""
DEFAULTS = "defaults"
"""Context key: the :class:`HalConfig` whose defaults fill what the body leaves out."""
_EMPTY_WHEN_NULL = ("env_names", "env", "upstream_keys", "forge_tokens", "secret_names",
                    "literal_env",
                    "egress", "config_files", "priority", "retries", "agent", "provider",
                    "process_manager")  # fmt: skip
"""Wire fields where null means "left out" (the default applies)."""
_NAMED_DEFAULTS = (
    ("agent", "default_agent"), ("provider", "default_provider"),
    ("process_manager", "process_manager"),
)  # fmt: skip
"""Each field a config fills when the request leaves it out, with the config's key."""
ConfigObject = Annotated[
    HalConfig | None,
    WithJsonSchema({"anyOf": [{"type": "object"}, {"type": "null"}]}),
]
"""The caller's resolved settings: a :class:`HalConfig`, or its JSON on the wire."""


class RunRequest(BaseModel):
    """A run request, every field of the right type and value before it is used."""

    model_config = ConfigDict(extra="ignore", strict=True, defer_build=True, populate_by_name=True)

    prompt: str = ""
    """The prompt (checked for emptiness by the task service, which says how to give one)."""
    repo: PathText = None
    """Repository path or URL (default: the repository of ``cwd``)."""
    ref: PathText = None
    """Branch, tag or commit."""
    issue: PathText = None
    """An issue to work on (``github:OWNER/REPO#N``, ``gitlab:GROUP/PROJECT#N`` or its web
    address): read from its forge where the request is executed, its repository cloned."""
    cwd: Annotated[Path, Field(strict=False), AfterValidator(_path_no_nul)] = Field(
        default_factory=Path.cwd
    )
    """The caller's directory, which a relative ``repo`` is relative to."""
    agent: Name = ""
    """Agent preset or command template; the config's ``default_agent`` when left out."""
    model: Name | None = None
    """The agent's model for this task (``--model``), over ``[agents.<agent>] model``; a
    preset passes it to its CLI's own model option. None: the config's."""
    provider: Name = ""
    """Provider, or a comma-separated priority list; the config's default when left out."""
    process_manager: Name = ""
    """Process manager; the config's default when left out."""
    timeout_s: Annotated[TimeoutSeconds, Field(strict=False)] | None = None
    """Time limit in seconds (the config's when left out of a body; null: none)."""
    env_names: list[EnvName] = Field(default_factory=_empty_list)
    """Forwarded host variable names (``--env NAME``)."""
    given_env: dict[EnvName, EnvValue] = Field(default_factory=_empty_dict, alias="env")
    """Variable values the caller sends (never stored): ``--env NAME=VALUE``, and through a
    daemon the forwarded and secret values of this shell too."""
    upstream_keys: dict[EnvName, EnvValue] = Field(default_factory=_empty_dict)
    """The agent's API key from the caller's shell, by variable name (a daemon's client sends
    it; never stored): the LLM gateway's key for the task, kept out of ``given_env`` so it
    never reaches the agent's environment (only an agent that goes direct, with no gateway
    route, is given it, as it must be)."""
    forge_tokens: dict[EnvName, EnvValue] = Field(default_factory=_empty_dict)
    """The caller's forge tokens by variable name (a daemon's client sends them for an
    ``--issue`` run; never stored): the issue is read and its repository cloned with them,
    on the host only, before the daemon's own."""
    secret_names: list[EnvName] = Field(default_factory=_empty_list)
    """Host variables marked secret (``--secret NAME``): forwarded and always masked."""
    literal_names: list[EnvName] | None = Field(default=None, alias="literal_env")
    """Names given as ``--env NAME=value`` (configuration, never masked); None means the
    keys of ``given_env`` (a daemon's body says which of its values were literal)."""
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    """Queue order under a daemon: higher starts first."""
    retries: int = Field(default=0, ge=0, le=100)
    """How many times an agent failure is retried."""
    config_sources: ConfigNotes | None = None
    """Which config the caller applied: messages recorded with the task's ``task_created``,
    in the same write (written by the client after the post, they could follow a fast
    run's ``task_end``, and a follower waiting for ``task_end`` last waited forever)."""
    egress: list[EgressHost] = Field(default_factory=_empty_list)
    """Hosts this task may reach through the egress proxy besides ``[gateway] egress``."""
    egress_only: list[EgressHost] | None = None
    """When set, the task reaches only these of the hosts config allows (it narrows)."""
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    """The task's token budget at the LLM gateway (``--max-tokens``)."""
    max_cost_usd: Dollars | None = None
    """The task's cost budget in dollars at the LLM gateway (``--max-cost``)."""
    config_files: list[str] = Field(default_factory=_empty_list)
    """Which config files the caller's settings came from (said back by ``hal run``)."""
    config_origin: list[ConfigOrigin] | None = Field(default=None, max_length=100_000)
    """Which file or variable set each key of a ``config`` sent as JSON, for the errors
    that name it."""
    config: ConfigObject = None
    """The caller's resolved settings (its ``./hal.toml`` included); the task keeps them
    for every run, with or without the daemon. None: the service's own."""
    runner_pid: SkipJsonSchema[int | None] = Field(default=None, exclude=True)
    """The process that will run the task, recorded with it (never from a body)."""
    branch: SkipJsonSchema[str | None] = Field(default=None, exclude=True)
    """The task's branch (a hive agent's ``hal/agent/NAME``; never from a body); None:
    ``hal/<task id>``."""

    @model_validator(mode="before")
    @classmethod
    def _from_wire(cls, data: Any, info: ValidationInfo) -> Any:
        """A body's fields only (never ``runner_pid`` or ``branch``), a null as left out,
        and a daemon's defaults for the directory and the literal names."""
        if not (info.context or {}).get(WIRE):
            return data
        if not isinstance(data, Mapping):
            raise ValueError("the request must be a JSON object")
        body = {
            key: value
            for key, value in data.items()
            if key in wire_fields() and not (value is None and key in _EMPTY_WHEN_NULL)
        }
        body["cwd"] = body.get("cwd") or "/"
        body.setdefault("literal_env", [])
        return body

    @field_validator("config", mode="plain")
    @classmethod
    def _config_kind(cls, value: Any) -> Any:
        """A config object, or its JSON (made one once every other field is valid)."""
        if value is None or isinstance(value, HalConfig | dict):
            return value
        raise ConfigError("config must be an object of hal settings")

    @model_validator(mode="after")
    def _settle(self, info: ValidationInfo) -> "RunRequest":
        """The caller's config made, the defaults filled, and options that contradict each
        other refused rather than one silently winning."""
        context = info.context or {}
        defaults: HalConfig | None = context.get(DEFAULTS)
        if isinstance(self.config, dict):
            self.config = _caller_config(self.config, defaults, self.config_origin or [])
        defaults = self.config or defaults
        for name, key in _NAMED_DEFAULTS:
            if not getattr(self, name):
                if defaults is None:
                    raise ValueError(f"{name} must be given (no config to take it from)")
                setattr(self, name, getattr(defaults, key))
        if defaults is not None and context.get(WIRE) and "timeout_s" not in self.model_fields_set:
            self.timeout_s = defaults.timeout_s
        self._agree()
        return self

    def _agree(self) -> None:
        # (`--env X=VALUE --secret X` agree: a value given here, masked as a secret.)
        literal = self.given_env if self.literal_names is None else self.literal_names
        if self.egress and self.egress_only is not None:
            from hal9999.allowlist import intersect

            dropped = [h for h in self.egress if not intersect([h], self.egress_only)]
            if dropped:
                only = "none" if not self.egress_only else " ".join(self.egress_only)
                raise ValueError(
                    f"--egress {dropped[0]} is outside --egress-only {only}, which would drop "
                    "it: name the host in --egress-only too, or leave one of them out"
                )
        named = [*self.env_names, *self.secret_names, *literal]
        if "TERM" in named and self.process_manager == "tmux":
            raise ValueError(
                "--env TERM would be replaced by tmux's own in the agent's terminal: leave "
                "it out (an agent that needs another terminal type sets it in its command)"
            )


_WIRE_FIELDS: frozenset[str] = frozenset()


def wire_fields() -> frozenset[str]:
    """The names a body may hold: every field's wire name but ``runner_pid`` and
    ``branch``."""
    global _WIRE_FIELDS
    if not _WIRE_FIELDS:
        _WIRE_FIELDS = frozenset(
            field.alias or name
            for name, field in RunRequest.model_fields.items()
            if name not in ("runner_pid", "branch")
        )
    return _WIRE_FIELDS


def _caller_config(
    data: dict[str, Any], own: HalConfig | None, origin: list[ConfigOrigin]
) -> HalConfig:
    """The settings a caller resolved (its ``./hal.toml`` included), in this home; an error
    about one names the caller's file or variable, as the caller's own run would."""
    from hal9999.config_origin import with_origin

    if own is not None:
        data = {**data, "home": str(own.home)}
    try:
        config = HalConfig.model_validate(data)
    except ValidationError as exc:  # in hal's words, not pydantic's multi-line report
        err = exc.errors()[0]
        where = ".".join(["config", *(str(p) for p in err["loc"])])
        raise ConfigError(f"{where}: {describe(err)}", hint=f"fix {where} in the request") from exc
    return with_origin(config, [o.model_dump() for o in origin])


def run_request(
    data: Mapping[str, Any], defaults: HalConfig | None = None, *, wire: bool = True
) -> RunRequest:
    """``data`` validated as a run request: a wire body (``wire``, its fields left out
    filled from ``defaults``), or a hal-built request's fields by attribute name. Refused
    with a :class:`UsageError` naming the field; values are never echoed (they may hold
    secrets)."""
    try:
        return RunRequest.model_validate(data, context={WIRE: wire, DEFAULTS: defaults})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if not where:  # options that contradict each other: the words say which and how
            raise UsageError(describe(err)) from exc
        raise UsageError(f"{where}: {describe(err)}", hint=f"fix {where} in the request") from exc


def check_env(body: Mapping[str, Any]) -> None:
    """Refuse a body whose ``env`` or ``upstream_keys`` is not variables' names and values
    (a resume's, checked as a run's are)."""
    for name in ("env", "upstream_keys"):
        try:
            _ENV_VALUES.validate_python(body.get(name), strict=True)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join([name, *(str(p) for p in err["loc"])])
            raise UsageError(
                f"{where}: {describe(err)}", hint=f"fix {where} in the request"
            ) from exc


_ENV_VALUES: TypeAdapter[dict[str, str] | None] = TypeAdapter(dict[EnvName, EnvValue] | None)


def config_notes(sources: ConfigNotes | None) -> "list[Event]":
    """A request's ``config_sources`` as the messages its task's events record after
    ``task_created``: an ``info`` line of the config that applied, a ``warning`` of what of
    ``./hal.toml`` was ignored."""
    if sources is None:
        return []
    from hal9999.events.models import Message

    made: list[Event] = [Message(level="info", text=sources.describe)]
    if sources.notice:
        made.append(Message(level="warning", text=sources.notice))
    return made


def new_task_id(taken: Callable[[str], bool]) -> str:
    """A short random id (8 chars of Crockford base32) for which ``taken`` is false (a lookup
    per candidate: reading every id at each submission grew with the store's history)."""
    while True:
        # 40 random bits read at once, five a letter (a read of the kernel's random source
        # per letter would be 16 system calls a submission).
        bits = int.from_bytes(secrets.token_bytes(5), "big")
        candidate = "".join(_ID_ALPHABET[(bits >> shift) & 31] for shift in range(35, -1, -5))
        if not taken(candidate):
            return candidate


def provider_list(value: str) -> list[str]:
    """``"bwrap,local"`` as ``["bwrap", "local"]``: providers in priority order."""
    names = list(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    if not names:
        raise ConfigError("no provider given", hint="--provider NAME[,NAME...]")
    return names


def with_model(config: HalConfig, agent: str, model: str) -> HalConfig:
    """``config`` with ``model`` as ``agent``'s (``--model``): a preset gives it to its CLI's
    own model option; a command template has none, so it is refused there, naming where a
    template's model goes."""
    from hal9999.agents.template import is_template

    if is_template(agent):
        raise UsageError(
            "--model is for an agent preset, and the agent is a command template",
            hint="write the model into the template itself (e.g. 'my-agent --model NAME "
            "{{prompt_file}}'), or use a preset: --agent claude --model NAME",
        )
    table = config.agents.get(agent) or AgentConfig()
    agents = {**config.agents, agent: table.model_copy(update={"model": model})}
    return config.model_copy(update={"agents": agents})
