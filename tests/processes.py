"""Live processes found by their command line (for tests that check what outlived them)."""

from __future__ import annotations

from pathlib import Path


def processes_under(home: Path) -> list[str]:
    """Command lines of live processes that name ``home`` (an agent, tmux, a runner or a
    gateway left)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(home) in cmdline:
            found.append(cmdline)
    return found
