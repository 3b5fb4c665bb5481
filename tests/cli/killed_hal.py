"""``python killed_hal.py POINT hal ARGS...``: ``hal ARGS...`` that kills itself (SIGKILL, no
clean-up, as the OOM killer or a power cut would) at one named step of a task's path.

Test-only: the points are patches of hal's own functions made in this wrapper process, so
hal has no hook of its own to keep. Each point names where the process dies; ``POINTS`` lists
them in the order a run passes them.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def die() -> None:
    """Die at once, as ``kill -9`` would."""
    os.kill(os.getpid(), signal.SIGKILL)


def after(owner: Any, name: str, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Die right after ``owner.name`` (async) returns (or raises), when ``when(*args)``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await original(*args, **kwargs)
        finally:
            if when(*args, **kwargs):
                die()

    setattr(owner, name, wrapper)


def before(owner: Any, name: str, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Die as ``owner.name`` is called (sync or async), when ``when(*args)``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            die()
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def after_sync(owner: Any, name: str, when: Callable[..., bool]) -> None:
    """Die right after ``owner.name`` (sync) returns, when ``when(*args)``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            die()
        return result

    setattr(owner, name, wrapper)


def _status_is(value: str) -> Callable[..., bool]:
    return lambda _self, _ctx, target, *a, **k: str(target.value) == value


def _transition(value: str, *, done: bool) -> None:
    from hal9999.tasks.recorder import RunRecorder

    # `_move`: every runner's move, in its thread or (a daemon's `preparing` and
    # `collecting`) on the event loop; one that finds the lock taken there raises
    # before it writes, and its move in a thread dies after it.
    if done:
        after_sync(RunRecorder, "_move", _status_is(value))
    else:
        before(RunRecorder, "_move", _status_is(value))


def _mid_agent() -> None:
    """While the agent runs, once it has committed (it leaves ``.git/committed`` then)."""
    from hal9999.tasks.follow import RunFollower

    original = RunFollower.follow

    async def follow(self: Any, ctx: Any, *args: Any, **kwargs: Any) -> Any:
        marker = ctx.session.workspace / ".git" / "committed"
        deadline = time.monotonic() + 30
        while not marker.exists():
            if time.monotonic() > deadline:
                sys.exit("killed_hal: the agent never committed")
            await asyncio.sleep(0.02)
        die()
        return await original(self, ctx, *args, **kwargs)

    RunFollower.follow = follow  # type: ignore[method-assign]


def _collect_step(step: str) -> None:
    """The collection script is killed as it starts ``step`` (git holding the checkout's
    index lock, as a git killed mid-way leaves it), and hal with it (``--die-with-parent``:
    a command in a bwrap sandbox dies with its hal; here the other way round)."""
    from hal9999.tasks import collect, finish

    stub = 'step() { echo "hal-step: $1" >&2; }'
    assert stub in collect.COLLECT_SCRIPT
    killer = (
        'step() { echo "hal-step: $1" >&2; '
        f'if [ "$1" = "{step}" ]; then : > .git/index.lock; kill -9 $$; fi; }}'
    )
    collect.COLLECT_SCRIPT = collect.COLLECT_SCRIPT.replace(stub, killer)
    after(finish.collect, "collect")


def _bringback_git(what: str) -> None:
    from hal9999.tasks import incoming

    after(incoming, "git", lambda *a, **k: k.get("what") == what)


def _on_spawn(
    rewrite: Callable[[list[str]], list[str]], dies: Callable[[list[str], dict[str, Any]], bool]
) -> None:
    """Every process hal starts (``subprocess.Popen``, under asyncio's subprocesses and
    :func:`hal9999.procs.run_captured` alike): its argv through ``rewrite``, and death once
    it has started when ``dies(argv, kwargs)``."""
    import subprocess

    class Spawned(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            argv = [os.fsdecode(a) for a in args] if isinstance(args, (list, tuple)) else []
            super().__init__(rewrite(argv) if argv else args, *rest, **kwargs)
            if argv and dies(argv, kwargs):
                die()

    subprocess.Popen = Spawned  # type: ignore[misc]


def _git_running(command: str) -> None:
    """Die once host git runs ``command`` in the source repository (hal runs in it): that
    git lives on (its own session) and finishes after hal is gone, perhaps while the next
    hal recovers."""
    _on_spawn(
        lambda argv: argv,
        lambda argv, kw: command in argv and Path(kw.get("cwd") or "/") == Path.cwd(),
    )


SLOW_GIT = Path(__file__).with_name("slow_git.py")


def _clone_running() -> None:
    """Die once host git starts filling the task's checkout (the ``read-tree`` after a
    snapshot's clone, or git's own ``clone``; not the snapshot's ``clone --bare``), that git
    slowed (:data:`SLOW_GIT`) so that it still runs when hal dies, as a big clone would."""

    def filling(argv: list[str]) -> bool:
        return "read-tree" in argv or ("clone" in argv and "--bare" not in argv)

    def slowed(argv: list[str]) -> list[str]:
        if not filling(argv) or "git" not in argv:
            return argv
        at = argv.index("git")
        return [*argv[:at], sys.executable, str(SLOW_GIT), *argv[at + 1 :]]

    _on_spawn(slowed, lambda argv, kw: filling(argv))


def _prestarted() -> None:
    """Once the agent's tmux session is open, its supervisor waiting on the ``--go`` FIFO."""
    from hal9999.process.tmux import TmuxProcessManager

    after(TmuxProcessManager, "prestart")


def _supervisor_made() -> None:
    """In the direct or PM2 manager's start, once the supervisor's command line is made
    (its run's files cleared), before anything is spawned."""
    from hal9999.process import direct, pm2

    for module in (direct, pm2):
        after_sync(module, "supervised", lambda *a, **k: True)


def _supervisor_claimed() -> None:
    """In the direct manager's start, once the supervisor has taken its run's mark (renamed
    it to the pid file), before hal writes the pid there."""
    from hal9999.process import direct

    def into_mark(spec: Any, pid: int) -> bool:
        deadline = time.monotonic() + 30
        while not os.path.lexists(direct._pid_file(spec)):
            if time.monotonic() > deadline:
                sys.exit("killed_hal: the supervisor never took its mark")
            time.sleep(0.005)
        die()
        return False

    direct._into_mark = into_mark  # type: ignore[assignment]


def _patch_writing() -> None:
    """An unchanged result: while the session's empty patch is written in its thread and the
    bring-back's ``update-ref`` runs (they overlap), once that git has started."""
    from hal9999.tasks import collect

    original = collect._nothing

    def nothing(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # still writing when the branch's git runs
        return original(*args, **kwargs)

    collect._nothing = nothing  # type: ignore[assignment]
    _git_running("update-ref")


def _halt_recorded(status: str) -> None:
    """``hal task stop|cancel`` once it has recorded ``status``, before it stops the agent."""
    from hal9999.tasks import service

    after_sync(service, "transition", lambda *a, **k: str(a[3].value) == status)


def _pool_reset(*, cleared: bool) -> None:
    """A daemon's pool resetting the sandbox a finished run gave back: as it starts, or once
    its slot points at the empty directory again (the provider's reset next)."""
    from hal9999.pool.lending import PoolLending
    from hal9999.pool.slots import Slot

    if cleared:
        after_sync(Slot, "clear", lambda *a, **k: True)
    else:
        before(PoolLending, "_reset")


def _pool_record(state: str, *, done: bool) -> None:
    """A daemon's pool writing a sandbox's row as ``state``: a sandbox it created, before
    its row (``leased``, not done) or after it; a sandbox it destroys, its row saying so
    (``destroying``) before the provider's destroy."""
    from hal9999.pool.lending import PoolLending

    def when(_self: Any, _entry: Any, **changes: Any) -> bool:
        return changes.get("state") == state

    (after if done else before)(PoolLending, "_record", when)


def _bwrap_destroyed() -> None:
    """Once bwrap destroyed a sandbox: a run's, before its record is cleared; a daemon
    pool's, before its row goes (the first destroy of a fresh home's daemon is its pool's)."""
    from hal9999.providers.bwrap.provider import BwrapProvider

    after(BwrapProvider, "destroy")


def _event(kind: str) -> None:
    from hal9999.events.log import EventLog

    after_sync(EventLog, "emit", lambda _self, event: event.type == kind)


def _module(name: str) -> Any:
    return importlib.import_module(f"hal9999.tasks.{name}")


def _bringback(name: str, module: str = "bringback") -> Callable[[], None]:
    """After ``name`` of a bring-back step's module (bringback holds what it calls)."""

    def patch() -> None:
        after(_module(module), name)

    return patch


def _service_run(*, done: bool) -> None:
    from hal9999.tasks.service import TaskService

    if done:
        after(TaskService, "run")
    else:
        before(TaskService, "run")


COLLECT_STEPS = (
    "reading the changes",
    "staging leftover changes",
    "committing leftover changes",
    "reading HEAD",
    "updating the branch",
    "creating the result directory",
    "bundling the branch",
    "writing the patch",
)

POINTS: dict[str, Callable[[], None]] = {
    "task_created": lambda: _service_run(done=False),
    "provisioning": lambda: _transition("provisioning", done=True),
    "sandbox_acquired": lambda: _event("sandbox_acquired"),
    "prestarted": _prestarted,
    "preparing": lambda: _transition("preparing", done=True),
    "clone_running": _clone_running,
    "cloned": lambda: after(_module("gitrepo"), "clone"),
    "running_recorded": lambda: _transition("running", done=True),
    "supervisor_made": _supervisor_made,
    "supervisor_claimed": _supervisor_claimed,
    "agent_started": lambda: after(_module("launch").AgentLauncher, "launch"),
    "mid_agent": _mid_agent,
    "agent_ended": lambda: _transition("collecting", done=False),
    "collecting": lambda: _transition("collecting", done=True),
    **{f"collect:{step}": functools.partial(_collect_step, step) for step in COLLECT_STEPS},
    "collected": lambda: after(_module("collect"), "collect"),
    "git_fetch_running": lambda: _git_running("fetch"),
    "fetched": _bringback("fetch_verified"),
    "scanned": _bringback("scan"),
    "patch_rewritten": _bringback("write_patch"),
    "kept_quarantine": lambda: _bringback_git("keeping the result"),
    "git_update_ref_running": lambda: _git_running("update-ref"),
    "patch_writing": _patch_writing,
    "branch_moved": _bringback("_set_ref", "landing"),
    "landed": _bringback("_landed", "landing"),
    "brought_back": lambda: after(_module("finish"), "collect_result"),
    "final_status": lambda: _transition("succeeded", done=False),
    "final_status_written": lambda: _transition("succeeded", done=True),
    "task_end_logged": lambda: _event("task_end"),
    "run_returned": lambda: _service_run(done=True),
    "stop_recorded": lambda: _halt_recorded("stopped"),
    "cancel_recorded": lambda: _halt_recorded("cancelled"),
    "pool_reset": lambda: _pool_reset(cleared=False),
    "pool_slot_cleared": lambda: _pool_reset(cleared=True),
    "failed_written": lambda: _transition("failed", done=True),
    "pool_created_unrecorded": lambda: _pool_record("leased", done=False),
    "pool_recorded": lambda: _pool_record("leased", done=True),
    "pool_destroying": lambda: _pool_record("destroying", done=True),
    "bwrap_destroyed": _bwrap_destroyed,
}
"""Kill points, in the order a successful in-process run passes them."""


def main() -> None:
    point, *args = sys.argv[1:]
    POINTS[point]()
    sys.argv = ["hal", *args]
    from hal9999.cli.entry import main as hal

    hal()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
