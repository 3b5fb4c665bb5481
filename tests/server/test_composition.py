"""``hal serve`` builds each provider and process manager once (hal9999.app): its pool,
its runs, its recovery and every stop or kill of a run use the same objects."""

from __future__ import annotations

from pathlib import Path

from hal9999.config import HalConfig
from hal9999.server.daemon import Daemon


def test_a_kill_and_a_run_use_the_daemons_own_provider_and_manager(tmp_path: Path) -> None:
    config = HalConfig(home=tmp_path / "home", process_manager="direct", default_provider="local")
    daemon = Daemon(config, {})
    try:
        pooled = daemon.provider("local")
        # TaskService.kill and the recovery ask the service's plugins; runs, the runner's.
        assert daemon.service.plugins.provider("local") is pooled
        assert daemon.service.runner.provider("local") is pooled
        assert daemon.service.plugins.manager("direct") is daemon.service.plugins.manager("direct")
        assert daemon.tasks.service is daemon.service and daemon.hive.tasks is daemon.tasks
    finally:
        daemon.store.close()


async def test_the_daemons_task_api_runs_a_task_to_its_end_and_resumes_it(
    tmp_path: Path,
) -> None:
    import asyncio
    import contextlib

    from tests.support.hal import git

    from hal9999.app import DaemonParts
    from hal9999.tasks.request import RunRequest

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("hello\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "initial"]):
        git(repo, *args)
    config = HalConfig(home=tmp_path / "home", process_manager="direct", default_provider="local")
    parts = DaemonParts(config, {"HAL_LOCAL_NETWORK": "host"})  # local cannot cut it off
    parts.bus.attach(asyncio.get_running_loop())
    scheduler = asyncio.create_task(parts.scheduler.run_forever())
    try:
        request = RunRequest(
            prompt="p", repo=str(repo), ref=None, agent="sh -c 'echo said {{prompt_file}}'",
            provider="local", process_manager="direct", timeout_s=60,
        )  # fmt: skip
        said: list[str] = []
        task = await asyncio.wait_for(parts.tasks.run(request, on_output=said.append), 120)
        assert task.status == "succeeded", task.error_message
        assert "said" in "".join(said)
        assert [t.id for t in await parts.tasks.list()] == [task.id]

        again: list[str] = []
        resumed = await asyncio.wait_for(
            parts.tasks.resume(task.id, prompt="more", on_output=again.append), 120
        )
        assert (resumed.id, resumed.status, resumed.resumes) == (task.id, "succeeded", 1)
        assert "".join(again).count("said") == 1, "the follower sees the new run only"
    finally:
        scheduler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scheduler
        await parts.scheduler.shutdown()
        await parts.pool.close()
        parts.store.close()
