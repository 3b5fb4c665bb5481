"""A task its runner claimed but could not start is failed once, with the way to run it
again (the scheduler would otherwise start it again at once); one that moved on, that
another live hal process holds, or whose claim failed, is left as it is."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.support.tasks import DEAD_PID, make_task, pooled_service

from hal9999.errors import CredentialsError
from hal9999.events.reader import read_events
from hal9999.tasks.session import Session

LACKING = CredentialsError("environment variable FOO is not set", hint="export FOO=...")


async def test_only_a_queued_task_this_process_holds_is_failed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store, service, _fake, _pool = pooled_service(home, "fake")
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", "hal"
    )
    try:
        store.insert_task(make_task(home, "mine1234", "queued", runner_pid=os.getpid()))
        store.insert_task(make_task(home, "held1234", "queued", runner_pid=other.pid))
        store.insert_task(make_task(home, "runs1234", "running", runner_pid=DEAD_PID))
        store.insert_task(make_task(home, "none1234", "queued"))  # its claim failed
        for task_id in ("mine1234", "held1234", "runs1234", "none1234"):
            service.fail_unstarted(task_id, LACKING)
    finally:
        other.kill()
        await other.wait()

    failed = store.get_task("mine1234")
    assert failed.status == "failed" and failed.runner_pid is None
    assert failed.error_code == LACKING.code
    assert failed.error_message == (
        "environment variable FOO is not set (export FOO=...; `hal task resume mine1234` "
        "runs it again)"
    )
    events = list(read_events(Session(Path(failed.session_dir)).events))
    assert [e.type for e in events][-2:] == ["phase", "task_end"]
    assert store.get_task("held1234").status == "queued", "another live process holds it"
    assert store.get_task("held1234").runner_pid == other.pid
    assert store.get_task("runs1234").status == "running", "it moved on: not ours to end"
    assert store.get_task("none1234").status == "queued", "never claimed here: not ours"
    store.close()
