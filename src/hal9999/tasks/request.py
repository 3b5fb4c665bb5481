"""What ``hal run`` (or the daemon's API, or a hive) asks the task service for, and the
small rules about it that hold before any task exists: its providers, a fresh task id."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hal9999.config import HalConfig
from hal9999.errors import ConfigError

if TYPE_CHECKING:
    from hal9999.events.models import Event

_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


@dataclass
class RunRequest:
    """What ``hal run`` asks for."""

    prompt: str
    repo: str | None
    ref: str | None
    agent: str
    provider: str
    process_manager: str
    timeout_s: float | None
    env_names: list[str] = field(default_factory=list)
    given_env: dict[str, str] = field(default_factory=dict)
    """Values given as ``--env KEY=VALUE`` (never stored)."""
    upstream_keys: dict[str, str] = field(default_factory=dict)
    """The agent's API key from the caller's shell, by variable name (a daemon's client sends
    it; never stored): the LLM gateway's key for the task, kept out of ``given_env`` so it
    never reaches the agent's environment (only an agent that goes direct, with no gateway
    route, is given it, as it must be)."""
    cwd: Path = field(default_factory=Path.cwd)
    priority: int = 0
    """Queue order under a daemon: higher starts first."""
    retries: int = 0
    """How many times an agent failure is retried."""
    secret_names: list[str] = field(default_factory=list)
    """Host variables marked secret (``--secret NAME``): forwarded and always masked."""
    literal_names: list[str] | None = None
    """Names given as ``--env NAME=value`` (configuration, never masked); ``None`` means the
    keys of ``given_env`` (a daemon request says which of its values were literal)."""
    config: HalConfig | None = None
    """The caller's resolved settings (its ``./hal.toml`` included); the task keeps them
    for every run, with or without the daemon. None: the service's own."""
    config_files: list[str] = field(default_factory=list)
    """Which config files the caller's settings came from (said back by ``hal run``)."""
    max_tokens: int | None = None
    """The task's token budget at the LLM gateway (``--max-tokens``)."""
    max_cost_usd: float | None = None
    """The task's cost budget in dollars at the LLM gateway (``--max-cost``)."""
    egress: list[str] = field(default_factory=list)
    """Hosts this task may reach through the egress proxy besides ``[gateway] egress``."""
    egress_only: list[str] | None = None
    """When set, the task reaches only these of the hosts config allows (it narrows)."""
    runner_pid: int | None = None
    """The process that will run the task, recorded with it (a daemon queueing it: one
    write per submission instead of two); None until a runner claims it."""
    branch: str | None = None
    """The task's branch, recorded with it (a hive agent's ``hal/agent/NAME``); None:
    ``hal/<task id>``."""
    config_sources: dict[str, str | None] | None = None
    """Which config the caller applied, as ``POST /v1/tasks`` takes it (``describe``, and
    ``notice``: what of ``./hal.toml`` was ignored): messages recorded with the task's
    ``task_created``. Written by the client once the task is posted, a fast run's
    ``task_end`` could come first, and a follower through the daemon, waiting for a
    ``task_end`` last, would wait forever."""


def config_notes(sources: dict[str, str | None] | None) -> list[Event]:
    """A request's ``config_sources`` as the messages its task's events record after
    ``task_created``: an ``info`` line of the config that applied, a ``warning`` of what of
    ``./hal.toml`` was ignored."""
    if sources is None:
        return []
    from hal9999.events.models import Message

    made: list[Event] = [Message(level="info", text=str(sources["describe"]))]
    if sources.get("notice"):
        made.append(Message(level="warning", text=str(sources["notice"])))
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
