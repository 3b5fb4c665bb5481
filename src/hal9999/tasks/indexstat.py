"""A fresh checkout's index, made true again once its files are the sandbox user's.

Host git writes a task's checkout as this process's user (root, for a sandbox with a uid of
its own), and the index records each file's owner and change time. Handing the files over
(:mod:`hal9999.providers.host.user`) changes both, so every entry of the index stopped
matching its file: each ``git status`` of the collection then read and hashed the whole
checkout (twice: its ``status`` writes nothing back, then ``add -A``), and collecting a
one-line change cost in proportion to the repository, not the change. One refresh as the
sandbox's user, after the handover and before any agent runs, records what the files are
now, so that later only the files the agent touched are read again.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from hal9999.tasks.gitrepo import _GIT_SAFE

logger = logging.getLogger(__name__)

REFRESH_S = 600.0
"""How long the refresh may take (it reads every file once); past it the run goes on, its
collection slower."""


def refreshed(adopting: Callable[[], None], workspace: Path, uid: int) -> Callable[[], None]:
    """``adopting`` (the handover of a fresh checkout at ``workspace`` to ``uid``), then
    :func:`refresh_index`, as one blocking step."""

    def both() -> None:
        adopting()
        refresh_index(workspace, uid)

    return both


def refresh_index(workspace: Path, uid: int) -> None:
    """Refresh the index of the fresh checkout at ``workspace`` (host git on a clone it
    made, no agent has run yet: no hook, no filter of the agent's) and give the new index
    to ``uid``, the checkout's owner now; the session's directories above it are closed to
    ``uid``, so host git runs as this process's user. A failure only leaves the collection
    slower: logged, never raised."""
    try:
        done = subprocess.run(
            ["git", *_GIT_SAFE, "-c", f"safe.directory={workspace}", "update-index", "-q",
             "--refresh"],
            cwd=workspace,
            env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin",
                 "HOME": "/"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=REFRESH_S, check=False,
        )  # fmt: skip
        os.chown(workspace / ".git" / "index", uid, uid, follow_symlinks=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("refreshing the index of %s failed: %s", workspace, exc)
        return
    if done.returncode not in (0, 1):  # 1: files differ from the index (none should)
        said = done.stderr.decode("utf-8", "replace").strip()[-300:]
        logger.warning("refreshing the index of %s failed: %s", workspace, said)
