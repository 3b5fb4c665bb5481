"""Reading config files: one bounded regular file each, and layers merged key by key."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hal9999.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
"""The largest config file read: a repository's hal.toml could be a link to /dev/zero."""


def read_toml(path: Path, label: str) -> tuple[dict[str, Any], bytes] | None:
    """The parsed table and the exact bytes it came from (trust hashes those bytes)."""
    try:
        data = read_regular(path, label)
    except FileNotFoundError:
        if os.path.islink(path):  # a dotfiles link whose target is gone: not "no config"
            raise ConfigError(
                f"{label}: a link to {os.readlink(path)!r}, which does not exist",
                hint=f"fix or remove the link {path}",
                path=str(path),
            ) from None
        return None
    except OSError as exc:
        raise ConfigError(
            f"{label}: cannot read the file: {exc.strerror or exc}",
            hint=f"fix or remove {path}",
            path=str(path),
        ) from exc
    import tomllib  # only where a file is: a run without one pays nothing

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{label}: not UTF-8 text", hint=f"save {path} as UTF-8", path=str(path)
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        if data.startswith(b"\xef\xbb\xbf"):  # Notepad's UTF-8; TOML says "line 1, column 1"
            raise ConfigError(
                f"{label}: starts with a byte-order mark (BOM)",
                hint=f"save {path} as UTF-8 without a BOM",
                path=str(path),
            ) from exc
        raise ConfigError(
            f"{label}: invalid TOML: {exc}", hint=f"fix the syntax of {path}", path=str(path)
        ) from exc
    except RecursionError as exc:
        raise ConfigError(
            f"{label}: nested too deeply to read", hint=f"fix {path}", path=str(path)
        ) from exc
    except ValueError as exc:  # int() of a number past Python's 4300 digits
        raise ConfigError(
            f"{label}: holds a number too long to read (more than {sys.get_int_max_str_digits()}"
            " digits)",
            hint=f"fix {path}",
            path=str(path),
        ) from exc
    if (where := _nul_at(table)) is not None:
        # TOML writes one as \u0000; no path, command or name can hold it (a home of
        # "/tmp/\u0000x" was an internal error, ValueError: embedded null byte).
        raise ConfigError(
            f"{label}: {where}: contains a NUL character (\\u0000)",
            hint=f"remove it from {path}",
            path=str(path),
        )
    return table, data


def _nul_at(value: Any, where: str = "") -> str | None:
    """The dotted name of the first key or string in ``value`` holding a NUL, or None."""
    if isinstance(value, str):
        return (where or "a value") if "\0" in value else None
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        name = f"{where}.{key}" if where else str(key)
        if isinstance(key, str) and "\0" in key:
            return name.replace("\0", "\\u0000")
        if (found := _nul_at(item, name)) is not None:
            return found
    return None


def read_regular(path: Path, label: str) -> bytes:
    """The bytes of a bounded regular file (a device, FIFO or huge file is a ConfigError)."""
    # Non-blocking open: a FIFO must not hang hal; then only a bounded regular file is read.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(
                f"{label}: not a regular file", hint=f"replace {path} with a file", path=str(path)
            )
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{label}: larger than {MAX_CONFIG_BYTES >> 20} MiB", hint=f"fix {path}", path=str(path)
        )
    return data


def merge(
    base: dict[str, Any],
    update: Mapping[str, Any],
    origin: dict[tuple[str, ...], str],
    source: str,
    prefix: tuple[str, ...] = (),
) -> None:
    """Deep-merge ``update`` into ``base``, recording which source set each key (a table
    two sources add to stays the first one's: the keys the later one set are its own)."""
    for key, value in update.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value, origin, source, path)
        else:
            base[key] = _copy(value)
            # Drop provenance of whatever this value replaced, then claim the whole subtree.
            for old in [p for p in origin if p[: len(path)] == path]:
                del origin[old]
            origin[path] = source


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
