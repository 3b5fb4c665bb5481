"""Environment variable names and values from the command line and the host, light.

The standard library only, so the thin ``hal run`` client (:mod:`hal9999.cli.daemon_run`)
checks ``--env``/``--secret`` and forwards the host's values by the same rules as the task
service, without importing pydantic (:mod:`hal9999.values` and
:mod:`hal9999.credentials` re-export these names).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from hal9999.errors import CredentialsError, UsageError


def is_text(value: str) -> bool:
    """Whether ``value`` is text: undecodable bytes from argv or the environment arrive as
    lone surrogates, which no file, database or JSON document can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_env_name(value: str) -> bool:
    """Whether ``value`` is a usable environment variable name (ASCII letters, digits, _)."""
    # ASCII only: a name the shell and execve agree on, and one SQLite and JSON keep exactly.
    # [A-Za-z_][A-Za-z0-9_]*, without `re` (the thin `hal run` imports this module).
    return value.isascii() and value.isidentifier()


def absolute_dir(environ: Mapping[str, str], var: str) -> str | None:
    """The directory ``var`` names (None when unset or empty); a relative or space-padded
    one is a ConfigError naming ``var``: it would name another place from each working
    directory (images, VM sockets or PM2 state that come and go with ``cd``)."""
    value = environ.get(var, "")
    if not value:
        return None
    if value != value.strip() or not value.startswith("/"):
        from hal9999.errors import ConfigError

        raise ConfigError(
            f"{var}: expected an absolute directory, got {value!r}", hint=f"fix or unset {var}"
        )
    return value


def forwarded_env(names: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The values of ``names`` from the host; a missing one, or one that is not text, is a
    clear error."""
    env: dict[str, str] = {}
    for name in names:
        if name not in environ:
            raise CredentialsError(
                f"environment variable {name} is not set",
                hint=f"export {name}=... before running hal, or leave {name} out of --env and"
                " --secret",
            )
        env[name] = host_text(name, environ[name])
    return env


def host_text(name: str, value: str) -> str:
    """``value`` of the host's variable ``name``, which hal is to forward: refused unless it
    is text. No JSON body to hal serve carries it, and a secret that is no text cannot be
    masked (its masker raised: an internal error before the task was made)."""
    if not is_text(value):
        raise CredentialsError(
            f"environment variable {name} is not UTF-8 text",
            hint=f"hal forwards variables as text: set {name} to UTF-8, or leave it out of"
            " --env, --secret and the config's forward_env and secrets",
        )
    return value


def parse_env_option(
    values: Iterable[str], option: str = "--env"
) -> tuple[list[str], dict[str, str]]:
    """Split ``--env KEY`` / ``--env KEY=VAL`` options (or ``option``'s) into forwarded names
    and given values."""
    names: list[str] = []
    given: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not is_env_name(key):  # ASCII only: the same rule as forward_env in the config
            forms = f"{option} NAME" + (" or --env NAME=VALUE" if option == "--env" else "")
            raise UsageError(
                f"invalid {option} name {key!r}",
                hint=f"use {forms}, NAME of ASCII letters, digits and _",
            )
        if sep:
            given[key] = value
        names.append(key)
    return names, given


ENV_PROGRAM = "/usr/bin/env"
# Run through sh, which sets PWD to the working directory: put it back as it was given, or
# unset it when it was not (dash adds nothing else).
_EXEC_KEEPING_PWD = 'export PWD="$0"; exec "$@"'
_EXEC_WITHOUT_PWD = 'unset PWD; exec "$@"'


def env_argv(
    env: Mapping[str, str], argv: Sequence[str], *, clear: bool = True, cwd: str | None = None
) -> list[str]:
    """``/usr/bin/env [-i] [-C cwd] K=V ... argv``: runs ``argv`` with exactly ``env`` (with
    ``clear``) in ``cwd``.

    env takes every argument holding ``=`` before the command as one more assignment, so a
    command path holding one (an interpreter under a directory named ``a=b``) would be set,
    not run: such a command runs through ``/bin/sh``, which execs it with the same
    environment. (Where ``/bin/sh`` is bash, that one case also gets ``SHLVL=0`` unless
    ``env`` sets SHLVL: bash's ``exec`` exports it whatever the script unsets, short of a
    ``readonly`` that prints an error or ``exec -c``, which clears ``env`` too.)
    """
    head = [ENV_PROGRAM, *(["-i"] if clear else []), *(["-C", cwd] if cwd else [])]
    head += [f"{key}={value}" for key, value in env.items()]
    if "=" not in argv[0]:
        return [*head, *argv]
    if not clear:
        return [*head, "/bin/sh", "-c", 'exec "$@"', "sh", *argv]
    if "PWD" in env:
        return [*head, "/bin/sh", "-c", _EXEC_KEEPING_PWD, env["PWD"], *argv]
    return [*head, "/bin/sh", "-c", _EXEC_WITHOUT_PWD, "sh", *argv]


def kept_env(
    environ: Mapping[str, str], names: Iterable[str], prefixes: tuple[str, ...] = ()
) -> dict[str, str]:
    """Only the variables of ``environ`` named in ``names`` or starting with one of
    ``prefixes``: the environment of a process hal detaches (the gateway, a VM), which
    outlives the command that starts it and needs none of its ``--secret`` or ``--env``
    values, nor its keys, nor any token of the user's shell (all readable in
    ``/proc/PID/environ`` for as long as it lives)."""
    kept = frozenset(names)
    return {
        name: value
        for name, value in environ.items()
        if name in kept or (prefixes and name.startswith(prefixes))
    }
