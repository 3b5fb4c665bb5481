"""A PATH on which the installed agent CLIs answer ``--version`` at once, for the ``hal
doctor`` calls of tests about something else (HAL_HOME, the database, docker, qemu images).

The real CLIs cost each doctor ~8 s of CPU (gemini ~4 s, aider and opencode ~2 s each:
node and Python loading their bundles), the bulk of a doctor's. tests/cli/test_doctor.py
and tests/cli/test_observe.py run doctor on the real ones."""

from __future__ import annotations

import shutil
from pathlib import Path

AGENTS = ("claude", "codex", "opencode", "gemini", "aider", "goose")


def quick_agents_path(directory: Path, path: str) -> str:
    """``path`` with a stub of each agent CLI found on it first (one that is not installed
    stays missing, as doctor would find it)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in AGENTS:
        if shutil.which(name, path=path) is None:
            continue
        stub = directory / name
        stub.write_text(f"#!/bin/sh\necho '{name} (a stub of the test)'\n")
        stub.chmod(0o755)
    return f"{directory}:{path}"
