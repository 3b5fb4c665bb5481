"""Session files that hold an agent's real API key.

A hal from before the key path was closed gave an agent run through ``hal serve`` the
caller's real key in its environment, and an agent may keep what it saw: codex's transcripts
under the session's ``home/.codex/`` held the key in full (and sent it upstream again with
the next call). ``hal doctor`` names such files and says to rotate the key: masking them now
would not take back what the agent sent or copied elsewhere, so hal changes nothing there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hal9999.config import HalConfig

CHUNK = 1 << 20
"""How much of a file one read takes."""
MIN_KEY_CHARS = 16
"""A value shorter than this is no API key: finding it would say nothing."""


def configured_keys(
    config: HalConfig, agents: Iterable[str], environ: Mapping[str, str]
) -> dict[str, str]:
    """The API keys of ``agents`` set in ``environ``, by variable name (their
    ``api_key_env`` or the preset's own)."""
    from hal9999.agents.registry import upstream_key_env

    keys: dict[str, str] = {}
    for agent in agents:
        name = upstream_key_env(config, agent)
        value = environ.get(name or "", "")
        if name and len(value) >= MIN_KEY_CHARS:
            keys[name] = value
    return keys


def files_holding(sessions: Path, keys: Mapping[str, str]) -> dict[Path, list[str]]:
    """Every session file holding one of ``keys``' values, with the names of those it holds:
    all of a session but its workspace (the agent's home, where a CLI keeps its transcripts
    and state; the log, events and run records). Not the workspace, a repository checkout
    that may be large: a result holding the key was refused by the result scan, which knew
    the key as the run's secret. Links are never followed (the files are an agent's)."""
    found: dict[Path, list[str]] = {}
    needles = {name: value.encode() for name, value in keys.items() if value}
    if not needles or not sessions.is_dir():
        return found
    overlap = max(len(v) for v in needles.values()) - 1
    for session in sorted(sessions.iterdir()):
        for top, dirs, files in _walk(session):
            dirs.sort()
            for name in sorted(files):
                path = Path(top, name)
                held = _held(path, needles, overlap)
                if held:
                    found[path] = held
    return found


def _walk(session: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """The session's own files and directories but its workspace, walked without links."""
    for top, dirs, files in os.walk(session, followlinks=False):
        if top == str(session):
            dirs[:] = [d for d in dirs if d != "workspace"]
        yield top, dirs, files


def _held(path: Path, needles: Mapping[str, bytes], overlap: int) -> list[str]:
    """The names of ``needles`` found in the regular file ``path`` (none for another kind)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    held: set[str] = set()
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        tail = b""
        while chunk := handle.read(CHUNK):
            text = tail + chunk
            held.update(n for n, v in needles.items() if v in text)
            tail = text[-overlap:] if overlap else b""
    return sorted(held)
