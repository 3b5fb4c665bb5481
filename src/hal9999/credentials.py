"""Credentials: host environment forwarded at exec time, and credential files installed.

Secrets never pass through argv, the store, events or logs: environment values are read
from the host at the moment a process starts, and files are written atomically with mode
600, then read back to verify.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path

from hal9999.config import CredentialFile
from hal9999.errors import CredentialsError
from hal9999.providers.base import Sandbox


def forwarded_env(names: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The values of ``names`` from the host; a missing one is a clear error."""
    env: dict[str, str] = {}
    for name in names:
        if name not in environ:
            raise CredentialsError(
                f"environment variable {name} is not set",
                hint=f"export {name}=... before running hal, or drop --env {name}",
            )
        env[name] = environ[name]
    return env


def parse_env_option(values: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """Split ``--env KEY`` / ``--env KEY=VAL`` options into forwarded names and given values."""
    names: list[str] = []
    given: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not key or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise CredentialsError(
                f"invalid --env name {key!r}", hint="use --env NAME or --env NAME=VALUE"
            )
        if sep:
            given[key] = value
        names.append(key)
    return names, given


async def install_files(sandbox: Sandbox, files: Iterable[CredentialFile], home: str) -> None:
    """Write each credential file into the sandbox (atomic, mode 600) and verify it."""
    for cred in files:
        source = Path(cred.source).expanduser()
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise CredentialsError(
                f"cannot read credential file {source}: {exc.strerror}",
                hint="fix `credentials` in your hal config",
            ) from exc
        target = cred.target
        if target.startswith("~/"):
            target = posixpath.join(home, target[2:])
        elif not target.startswith("/"):
            target = posixpath.join(home, target)
        await sandbox.write_file_atomic(target, data, mode=cred.mode)
        if await sandbox.read_file(target) != data:
            raise CredentialsError(f"credential file {target} did not verify after writing")
