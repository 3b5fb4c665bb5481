"""Trust in a project's ``hal.toml``: untrusted input until the user says otherwise.

hal reads ``./hal.toml`` from the directory it runs in, usually a repository someone else
wrote. Like direnv or mise, hal applies such a file in full only after ``hal trust``, which
records the file's real path and the SHA-256 of its content in the user's config directory
(``$XDG_CONFIG_HOME/hal9999/trusted.json``). Any change to the content revokes the trust.

Until then the file may only *narrow* what a task gets: the keys in :data:`NARROWING_KEYS`,
each limit only lowered relative to the user's own config and the defaults. Everything else
(network, forwarded variables, credentials, binds, providers and their settings, the home,
the default provider, API key variables, base URLs, egress...) is ignored and reported.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hal9999 import fs
from hal9999.errors import ConfigError
from hal9999.gateway.allowlist import intersect

TRUST_FILE_NAME = "trusted.json"
"""The trust record, in the user's hal config directory."""

NARROWING_KEYS = (
    "timeout_s",
    "resources.memory_mb",
    "resources.cpus",
    "resources.pids",
    "resources.disk_mb",
    "resources.disk_files",
    "default_agent",
    "agents.<name>.model",
    "gateway.egress_only",
)
"""What an untrusted ``hal.toml`` may set; limits only downwards, the agent only by preset."""

_LIMITS = ("memory_mb", "cpus", "pids", "disk_mb", "disk_files")
# A preset name, never a command template (a template is a command line hal would run).
_PRESET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A model name never starts with '-', so it cannot turn into an option of the agent's CLI.
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")


def digest(data: bytes) -> str:
    """The content hash a trust record keeps."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ProjectConfig:
    """A directory's ``hal.toml``: whether it is trusted, and what of it hal ignored."""

    path: Path
    """The file."""
    trusted: bool
    """Applied in full (``hal trust`` recorded this exact content)."""
    ignored: tuple[str, ...] = ()
    """Keys hal did not apply because the file is not trusted."""
    changed: bool = False
    """It was trusted once and its content has changed since."""

    def notice(self) -> str | None:
        """The one line ``hal run`` prints when keys were ignored, or ``None``."""
        if self.trusted or not self.ignored:
            return None
        state = "changed since you trusted it" if self.changed else "not trusted"
        return (
            f"{self.path} is {state}: ignored {', '.join(self.ignored)} "
            f"(review the file, then run `hal trust` in {self.path.parent} to apply all of it)"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "path": str(self.path),
            "trusted": self.trusted,
            "ignored": list(self.ignored),
            "changed": self.changed,
        }


class TrustStore:
    """The user's trusted project files: real path -> content hash."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_config_dir(cls, config_dir: Path) -> TrustStore:
        """The store kept in the user's hal config directory."""
        return cls(config_dir / TRUST_FILE_NAME)

    @staticmethod
    def key(file: Path) -> str:
        """The identity of a project file: its real absolute path."""
        return str(file.resolve())

    def entries(self) -> dict[str, str]:
        """Every record; an unreadable or corrupt store trusts nothing (fails closed)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def is_trusted(self, file: Path, content: bytes) -> bool:
        """Whether ``file`` with exactly ``content`` was trusted."""
        return self.entries().get(self.key(file)) == digest(content)

    def was_trusted(self, file: Path) -> bool:
        """Whether some content of ``file`` was trusted (it may have changed since)."""
        return self.key(file) in self.entries()

    def trust(self, file: Path, content: bytes) -> str:
        """Record ``file`` with ``content`` as trusted; return the hash recorded."""
        entries = self.entries()
        entries[self.key(file)] = digest(content)
        self._write(entries)
        return entries[self.key(file)]

    def revoke(self, file: Path) -> bool:
        """Forget ``file``; whether it had a record."""
        entries = self.entries()
        if entries.pop(self.key(file), None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: Mapping[str, str]) -> None:
        try:
            self._write_atomic(entries)
        except OSError as exc:
            raise ConfigError(
                f"cannot record trust in {self.path}: {exc.strerror or exc}",
                hint="make your hal config directory ($XDG_CONFIG_HOME/hal9999) writable",
            ) from exc

    def _write_atomic(self, entries: Mapping[str, str]) -> None:
        # Atomic and private: a torn write must not trust anything it should not.
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fs.write_json(self.path, dict(sorted(entries.items())), indent=2, mode=0o600)


def narrow_project_table(
    table: Mapping[str, Any], base: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """What an untrusted project table may apply over ``base`` (the user's validated config
    as a dict), and the dotted keys it may not (with why, where it is a limit).

    A resource limit left unset in ``base`` stands for its default in ``defaults`` (what a
    sandbox really gets); ``0`` means no limit, so a project may never ask for it."""
    kept: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in table.items():
        if key == "timeout_s":
            _keep_if_lower(kept, ignored, key, key, value, base.get(key))
        elif key == "resources" and isinstance(value, Mapping):
            limits: dict[str, Any] = {}
            current = base.get("resources") or {}
            for name, limit in value.items():
                if name in _LIMITS:
                    now = current.get(name)
                    if now is None and defaults is not None:
                        now = defaults.get(name)
                    _keep_if_lower(limits, ignored, name, f"resources.{name}", limit, now,
                                   zero_is_unlimited=True)  # fmt: skip
                else:
                    ignored.append(f"resources.{name}")
            if limits:
                kept["resources"] = limits
        elif key == "default_agent" and isinstance(value, str) and _PRESET.fullmatch(value):
            kept[key] = value
        elif key == "gateway" and isinstance(value, Mapping):
            gateway = _egress_only(value, base.get("gateway") or {}, ignored)
            if gateway:
                kept["gateway"] = gateway
        elif key == "agents" and isinstance(value, Mapping):
            agents = _agent_models(value, ignored)
            if agents:
                kept["agents"] = agents
        else:
            ignored.append(key)
    return kept, ignored


def _egress_only(
    table: Mapping[str, Any], base: Mapping[str, Any], ignored: list[str]
) -> dict[str, Any]:
    # Only the narrowing list, and only what the user's own narrowing list allows too: a
    # project can drop hosts from egress, never add one (egress itself is the user's).
    kept: dict[str, Any] = {}
    for name, value in table.items():
        if name == "egress_only" and isinstance(value, list):
            hosts = [str(h) for h in value]
            mine = base.get("egress_only")
            kept[name] = hosts if mine is None else intersect(hosts, mine)
        else:
            ignored.append(f"gateway.{name}")
    return kept


def _keep_if_lower(
    kept: dict[str, Any],
    ignored: list[str],
    name: str,
    dotted: str,
    value: Any,
    current: Any,
    *,
    zero_is_unlimited: bool = False,
) -> None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number:
        kept[name] = value  # not a number: kept, so validation names the bad value and file
        return
    unlimited = float("inf")
    mine = unlimited if zero_is_unlimited and value == 0 else value
    theirs = current
    if current is None or (zero_is_unlimited and current == 0):
        theirs = unlimited
    if mine <= theirs:
        kept[name] = value
    else:
        ignored.append(f"{dotted} (raises the limit)")


def _agent_models(agents: Mapping[str, Any], ignored: list[str]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, settings in agents.items():
        if not isinstance(settings, Mapping):
            ignored.append(f"agents.{name}")
            continue
        for key, value in settings.items():
            if key == "model" and isinstance(value, str) and _MODEL.fullmatch(value):
                kept.setdefault(name, {})["model"] = value
            else:
                ignored.append(f"agents.{name}.{key}")
    return kept
