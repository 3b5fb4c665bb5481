"""Whether a task's runner process lives: light to import, so the thin path of ``hal task
list`` can ask without importing the task service."""

from __future__ import annotations

from hal9999 import procs


def runner_alive(pid: int | None, started: int | None = None) -> bool:
    """Whether ``pid`` is a live process (not a zombie) and, with ``started`` (the record's
    ``runner_started``), still the runner the record names, not a later process that reused
    its pid."""
    return procs.alive(pid, started)


def waits_for_runner(status: str, runner_pid: int | None, started: int | None = None) -> bool:
    """Whether a task is queued with no live hal process holding it (the one that queued it
    died before running it): `hal serve` starts it, `hal task resume` runs it here."""
    return status == "queued" and not runner_alive(runner_pid, started)
