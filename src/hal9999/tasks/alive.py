"""Whether a task's runner process lives: standard library only, so the thin path of
``hal task list`` can ask without importing the task service."""

from __future__ import annotations


def runner_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live hal process (not a zombie, not a reused pid)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as cmd:
            return b"hal" in cmd.read()
    except OSError:
        return False


def waits_for_runner(status: str, runner_pid: int | None) -> bool:
    """Whether a task is queued with no live hal process holding it (the one that queued it
    died before running it): `hal serve` starts it, `hal task resume` runs it here."""
    return status == "queued" and not runner_alive(runner_pid)
