"""Process specs and restart counters for the PM2 process-manager tests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hal9999.spec import ProcessSpec, RestartPolicy, ShellCommand


def spec_for(tmp_path: Path, script: str, restart: RestartPolicy | None = None) -> ProcessSpec:
    """A PM2 process spec running ``script``, logging under ``tmp_path``."""
    return ProcessSpec(
        name="hal-pm2",
        command=ShellCommand(script=script),
        restart=restart or RestartPolicy(),
        log_path=tmp_path / "run" / "out.log",
        exit_path=tmp_path / "run" / "exit",
    )


def failing_runs(tmp_path: Path, seconds: float) -> tuple[Path, ProcessSpec]:
    """A spec whose every run adds a line to the returned counter file, sleeps ``seconds``
    and fails (exit 3), restarted on failure once."""
    counter = tmp_path / "runs"
    spec = spec_for(
        tmp_path, f"echo run >> {counter}; sleep {seconds:g}; exit 3",
        RestartPolicy(mode="on-failure", max_restarts=1),
    )  # fmt: skip
    return counter, spec


async def runs(counter: Path, want: int, timeout: float = 20) -> int:
    """The runs counted in ``counter`` once ``want`` or more, or when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = len(counter.read_text().splitlines()) if counter.exists() else 0
        if seen >= want:
            return seen
        await asyncio.sleep(0.1)
    return len(counter.read_text().splitlines()) if counter.exists() else 0
