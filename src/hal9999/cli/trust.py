"""``hal trust``: apply a project's ``hal.toml`` in full, show its state, or revoke it."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import click

from hal9999.cli.main import cli, emit_json
from hal9999.cli.options import json_option
from hal9999.config import CONFIG_FILE_NAME, current_dir, load_config_sources, user_config_path
from hal9999.configfile import read_regular
from hal9999.errors import ConfigError, NotFoundError, UsageError
from hal9999.trust import TrustStore, digest


def _project_file(path: str | None) -> Path:
    if path is not None and not path:  # '' would be taken as no path: ./hal.toml, not named
        raise UsageError("the path is empty", hint=f"give the path of a {CONFIG_FILE_NAME}, "
                         f"or none for the current directory's")  # fmt: skip
    here = current_dir()
    if here is None and not (path and Path(path).is_absolute()):
        raise UsageError("the current directory no longer exists", hint="cd to the project")
    target = Path(path) if path else (here or Path("/")) / CONFIG_FILE_NAME
    try:
        if path and target.is_dir():  # not ./hal.toml itself: 'no hal.toml at hal.toml/hal.toml'
            target = target / CONFIG_FILE_NAME
        return (here or Path("/")) / target if not target.is_absolute() else target
    except OSError as exc:
        raise UsageError(f"cannot use {path}: {exc.strerror or exc}") from exc


def _read(file: Path) -> bytes:
    try:
        return read_regular(file, str(file))
    except FileNotFoundError:
        # A path the user named may be any file; `hal trust` alone looks for hal.toml.
        what = CONFIG_FILE_NAME if file.name == CONFIG_FILE_NAME else "file"
        raise NotFoundError(
            f"no {what} at {file}",
            hint=f"run hal trust in the directory that has {CONFIG_FILE_NAME}, or give its path",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {file}: {exc.strerror or exc}",
            hint=f"give the path of a readable {CONFIG_FILE_NAME}",
        ) from exc


def _read_toml(file: Path) -> bytes:
    """The bytes of ``file``, which must be TOML: hal can apply nothing else, so trusting or
    showing another file is a mistake (a path given in error)."""
    content = _read(file)
    other = f"give the path of a {CONFIG_FILE_NAME}"
    try:
        tomllib.loads(content.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text", hint=f"save it as UTF-8, or {other}") from exc
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # a=[[[[...: the parser's stack
        why = "nested too deeply to read" if isinstance(exc, RecursionError) else str(exc)
        hint = f"fix its syntax, or {other}"
        raise ConfigError(f"{file}: not valid TOML: {why}", hint=hint) from exc
    return content


@cli.command()
@click.argument("path", required=False)
@click.option("--revoke", is_flag=True, help="Forget the trust; the file is narrowed again.")
@click.option("--show", is_flag=True, help="Say whether the file is trusted and what is ignored.")
@json_option("Print JSON.")
def trust(path: str | None, revoke: bool, show: bool, as_json: bool) -> None:
    """Trust ./hal.toml (or PATH): apply all of it, not only the keys that narrow a task.

    A project's hal.toml may set network, credentials, providers and more, so hal applies
    such keys only after you have read the file and trusted this exact content; any change
    revokes the trust."""
    if revoke and show:
        raise UsageError("--revoke and --show exclude each other", hint="give one of them")
    file = _project_file(path)
    store = TrustStore.for_config_dir(user_config_path(os.environ).parent)
    if revoke:
        removed = store.revoke(file)
        result = {"path": str(file), "trusted": False, "revoked": removed}
        message = f"revoked trust in {file}" if removed else f"{file} was not trusted"
    elif show:
        content = _read_toml(file)
        trusted = store.is_trusted(file, content)
        ignored: list[str] = []
        if not trusted:
            _, sources = load_config_sources(cwd=file.parent) if file.name == CONFIG_FILE_NAME \
                else (None, None)  # fmt: skip
            if sources is not None and sources.project is not None:
                ignored = list(sources.project.ignored)
        changed = not trusted and store.was_trusted(file)
        result = {"path": str(file), "trusted": trusted, "changed": changed,
                  "digest": digest(content), "ignored": ignored}  # fmt: skip
        state = "trusted" if trusted else ("changed since trusted" if changed else "not trusted")
        message = f"{file}: {state}" + (f"; ignored: {', '.join(ignored)}" if ignored else "")
    else:
        content = _read_toml(file)
        recorded = store.trust(file, content)
        result = {"path": str(file), "trusted": True, "digest": recorded}
        message = f"trusted {file} ({recorded[:19]}...): hal applies all of it until it changes"
    if as_json:
        emit_json(result)
    else:
        click.echo(message)
