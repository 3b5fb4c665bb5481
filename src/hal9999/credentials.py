"""Credentials: host environment forwarded at exec time, credential files installed for a
run and removed after it, and the secret values inside those files.

Secrets never pass through argv, the store, events or logs: environment values are read
from the host at the moment a process starts, and files are written atomically with mode
600, then read back to verify. A credential file lives in the session only while a run
uses it: :func:`remove_files` takes it out when the run ends (whatever the outcome) and the
next run (a resume) installs it again.

Which values are masked: :func:`file_secrets` picks the token-like values out of a
credential file (values of key/token/secret/password-like keys in JSON, YAML, INI, env and
netrc files, and any long high-entropy word), not the whole file.
"""

from __future__ import annotations

import functools
import json
import logging
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal9999 import fs
from hal9999.config import CredentialFile, HalConfig
from hal9999.envvars import forwarded_env as forwarded_env  # re-exported (light module)
from hal9999.envvars import parse_env_option as parse_env_option
from hal9999.errors import CredentialsError, HalError
from hal9999.redact import (
    MIN_SECRET_LEN,
    SecretMasker,
    forwarded_is_secret,
    high_entropy,
    secret_like_name,
)

if TYPE_CHECKING:  # not at run time: the CLI's log masker has no sandbox
    from hal9999.providers.base import Sandbox

logger = logging.getLogger(__name__)

MAX_CREDENTIAL_BYTES = 1 << 20
"""Credential files larger than this are refused (they are logins and keys, not data)."""

_SECRET_KEY_WORDS = ("PRIVATE", "COOKIE", "SESSION", "BEARER", "APIKEY", "PASS")


def read_credential(source: Path) -> bytes:
    """The bytes of a host credential file; a missing or oversized one is a clear error."""
    source = Path(source).expanduser()
    try:
        with source.open("rb") as handle:
            data = handle.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as exc:
        raise CredentialsError(
            f"cannot read credential file {source}: {exc.strerror}",
            hint="fix `credentials` in your hal config",
        ) from exc
    if len(data) > MAX_CREDENTIAL_BYTES:
        raise CredentialsError(
            f"credential file {source} is over {MAX_CREDENTIAL_BYTES} bytes",
            hint="point `credentials` at the login or key file itself",
        )
    return data


def home_relative(target: str, home: str) -> str | None:
    """A credential target as a path relative to the agent's home (None when outside it)."""
    if target.startswith("~/"):
        target = target[2:]
    elif target.startswith("/"):
        prefix = home.rstrip("/") + "/"
        if not target.startswith(prefix):
            return None
        target = target[len(prefix) :]
    target = posixpath.normpath(target)
    if target in (".", "") or target.startswith("../") or target == "..":
        return None
    return target


async def install_files(sandbox: Sandbox, files: Iterable[CredentialFile], home: str) -> None:
    """Write each credential file into the sandbox (atomic, mode 600) and verify it."""
    for cred in files:
        data = read_credential(cred.source)
        relative = home_relative(cred.target, home)
        target = posixpath.join(home, relative) if relative is not None else cred.target
        await sandbox.write_file_atomic(target, data, mode=cred.mode)
        if await sandbox.read_file(target) != data:
            raise CredentialsError(f"credential file {target} did not verify after writing")


def remove_files(home_dir: Path, files: Iterable[CredentialFile], home: str) -> list[str]:
    """Take the credential files out of the session's agent home (``home_dir`` on the host,
    ``home`` inside); returns what could not be removed. Links are removed as links, never
    followed (the agent may have replaced a file with one); a directory in its place stays."""
    from hal9999.agentfs import AgentDir

    left: list[str] = []
    targets = [home_relative(cred.target, home) for cred in files]
    if not any(targets) or not home_dir.is_dir():
        return left
    with AgentDir.open(home_dir, label=home) as agent_home:
        for relative in targets:
            if relative is None:
                continue
            try:
                if agent_home.kind(relative) == "dir":
                    left.append(relative)
                    continue
                agent_home.remove(relative)
            except HalError as exc:
                logger.warning("credential file %s not removed: %s", relative, exc.one_line())
                left.append(relative)
    return left


def host_log_masker(config: HalConfig, environ: Mapping[str, str]) -> SecretMasker:
    """The masker of hal's own log (CLI and daemon): marked secrets (``secrets``, agents'
    ``api_key_env``) always, ``forward_env`` values that look like secrets, and the
    token-like values of credential files."""
    masker = SecretMasker()
    for name in [*config.secrets, *(a.api_key_env for a in config.agents.values())]:
        value = environ.get(name) if name else None
        if value:
            masker.add(value)
    for name in config.forward_env:
        value = environ.get(name)
        if value and forwarded_is_secret(name, value):
            masker.add(value)
    for cred in config.credentials:
        for secret in file_secrets(cred.source):
            masker.add(secret)
    return masker


def file_secrets(source: Path) -> list[str]:
    """The token-like values inside a host credential file (unreadable files give none)."""
    try:
        data = read_credential(source)
    except CredentialsError:
        return []
    return secrets_in_text(data.decode("utf-8", "replace"))


@functools.cache
def _line_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """A ``KEY=VALUE`` (or ``key: value``) line and a netrc secret, compiled when a
    credential file is first read: not at import, on the path of every run
    that installs none."""
    return (
        re.compile(r"""^\s*(?:export\s+)?["']?([\w.\-]+)["']?\s*[:=]\s*(.*?)\s*$"""),
        re.compile(r"\b(?:password|passwd|account)\s+(\S+)"),
    )


def secrets_in_text(text: str) -> list[str]:
    """The values in a credential file's text that are secrets (see the module docstring)."""
    found: dict[str, None] = {}
    stripped = text.strip()
    structured = stripped.startswith(("{", "[")) or "=" in stripped
    if stripped and not structured and not any(c.isspace() for c in stripped):
        found[stripped] = None  # a bare token file (not a compact JSON or KEY=VALUE line)
    try:
        _walk_json(json.loads(text), None, found)
    except ValueError:
        pass
    assignment, netrc_secret = _line_patterns()
    for line in text.splitlines():
        if (match := assignment.match(line)) is not None:
            value = match.group(2).strip().strip("'\"").rstrip(",").strip("'\"")
            if _secret_key(match.group(1)):
                found[value] = None
        for netrc in netrc_secret.finditer(line):
            found[netrc.group(1)] = None
    for word in re.findall(r"[^\s\"',;:=<>()\[\]{}]+", text):
        if high_entropy(word):
            found[word] = None
    return [value for value in found if len(value) >= MIN_SECRET_LEN]


def _secret_key(key: str) -> bool:
    upper = key.upper().replace("-", "_")
    return secret_like_name(upper) or any(word in upper for word in _SECRET_KEY_WORDS)


def _walk_json(value: Any, key: str | None, found: dict[str, None]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _walk_json(v, str(k), found)
    elif isinstance(value, list):
        for item in value:
            _walk_json(item, key, found)
    elif isinstance(value, str) and key is not None and _secret_key(key):
        found[value] = None


class EnvKinds:
    """What each variable of a task's environment is, by name (values are never stored).

    A literal ``--env NAME=value`` is configuration and never masked; ``--secret NAME`` is
    always masked; any other forwarded name is masked when it looks like a secret.

    A plain class, not a dataclass: the methods a dataclass generates are compiled
    per class, at the import of every in-process ``hal run``."""

    __slots__ = ("literal", "secret")
    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable, as a dataclass is

    def __init__(self, literal: list[str] | None = None, secret: list[str] | None = None) -> None:
        self.literal: list[str] = [] if literal is None else literal
        self.secret: list[str] = [] if secret is None else secret

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EnvKinds):
            return NotImplemented
        return (self.literal, self.secret) == (other.literal, other.secret)

    def __repr__(self) -> str:
        return f"EnvKinds(literal={self.literal!r}, secret={self.secret!r})"

    def save(self, path: Path) -> None:
        """Record the names (private, atomically)."""
        data = {"literal": self.literal, "secret": self.secret}
        fs.write_json(path, data, mode=0o600, durable=False)

    @classmethod
    def load(cls, path: Path) -> EnvKinds:
        """The recorded names; none when nothing was recorded."""
        try:
            data = json.loads(path.read_text())
            return cls(
                literal=[str(n) for n in data.get("literal", [])],
                secret=[str(n) for n in data.get("secret", [])],
            )
        except (OSError, ValueError, AttributeError):
            return cls()


def iter_unique(*groups: Iterable[str]) -> Iterator[str]:
    """Every name of ``groups`` once, in order."""
    yield from dict.fromkeys(name for group in groups for name in group)
