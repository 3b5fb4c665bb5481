"""Task records, services, schedulers and repositories for the task-runner tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.hal import git

from hal9999.config import CredentialFile, HalConfig
from hal9999.events.log import EventLog
from hal9999.events.models import Phase
from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.pool.settings import SchedulerSettings
from hal9999.providers.base import Provider
from hal9999.redact import SecretMasker
from hal9999.store import Store, TaskRecord
from hal9999.tasks.plugins import load_provider_for
from hal9999.tasks.request import RunRequest
from hal9999.tasks.scheduler import Scheduler
from hal9999.tasks.service import TaskService
from hal9999.tasks.session import Session

DEAD_PID = 2**22 + 7  # above pid_max's default: never a live process


def make_task(home: Path, task_id: str, status: str, **fields: object) -> TaskRecord:
    """A task record ``task_id`` in ``status`` with its session made under ``home``."""
    session = Session(home / "sessions" / task_id)
    session.create()
    session.workspace.mkdir(exist_ok=True)
    values: dict[str, object] = {
        "id": task_id,
        "prompt": "p",
        "agent": "true {{prompt_file}}",
        "provider": "fake",
        "process_manager": "direct",
        "repo": str(home),
        "repo_kind": "local",
        "branch": f"hal/{task_id}",
        "status": status,
        "created_at": time.time() - 60,
        "session_dir": str(session.root),
        **fields,
    }
    return TaskRecord.model_validate(values)


def pooled_service(home: Path, provider: str) -> tuple[Store, TaskService, Provider, WarmPool]:
    """A task service over a fresh home, and a warm pool of one provider with its defaults."""
    config = HalConfig(home=home)
    store = Store.open(home)
    service = TaskService(config, store, {})
    loaded = load_provider_for(config, provider)
    pool = WarmPool(
        providers=lambda name: loaded,
        settings=lambda name: ProviderSettings(),
        slots=SlotDir(home / "pool"),
        store=store,
    )
    return store, service, loaded, pool


def git_repo(path: Path) -> Path:
    """A new repository at ``path`` with a README in one commit on ``main``."""
    path.mkdir()
    (path / "README").write_text("hello\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "initial"]):
        git(path, *args)
    return path


def trivial_request(repo: Path, provider: str = "bwrap", **extra: Any) -> RunRequest:
    """A `true` agent's run of ``repo`` on ``provider``, supervised directly."""
    return RunRequest(
        prompt="p", repo=str(repo), ref=None, agent="true {{prompt_file}}", provider=provider,
        process_manager="direct", timeout_s=60, **extra,
    )  # fmt: skip


async def run_trivial_task(tmp_path: Path, repo: Path) -> None:
    """One `true` agent run through a pooled bwrap service, to its success."""
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    request = trivial_request(repo)
    task = await service.create(request)
    done = await service.run(task.id)
    store.close()
    assert done.status == "succeeded", done.error_message


def ended(store: Store, task_id: str, status: str, code: str | None, retry: Any) -> TaskRecord:
    """End a run as TaskRunner does: a failure the daemon's ``retry`` policy retries is
    written ``queued`` again with the retry's fields, in the write that ends the run."""
    if status == "failed" and retry is not None:
        failed = store.get_task(task_id).model_copy(update={"status": status, "error_code": code})
        again = retry(failed)
        if again is not None:
            return store.update_task(task_id, status="queued", **again.fields(time.time()))
    return store.update_task(task_id, status=status, error_code=code)


class ScriptedService:
    """Stands in for TaskService: each run holds until released, then ends as scripted
    (queued again when the ``retry`` policy it is given retries the failure)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.outcomes: dict[str, list[tuple[str, str | None]]] = {}

    def gate(self, task_id: str) -> asyncio.Event:
        return self.gates.setdefault(task_id, asyncio.Event())

    async def run(self, task_id: str, *, retry: Any = None, **_: Any) -> TaskRecord:
        self.started.append(task_id)
        self.store.update_task(task_id, status="running")
        await self.gate(task_id).wait()
        self.gate(task_id).clear()
        status, code = (self.outcomes.get(task_id) or [("succeeded", None)]).pop(0)
        return ended(self.store, task_id, status, code, retry)

    @contextmanager
    def events(self, task: TaskRecord, masker: SecretMasker | None = None) -> Iterator[EventLog]:
        with EventLog(Session(Path(task.session_dir)).events, task.id, store=self.store) as log:
            yield log

    def find(self, task_id: str) -> TaskRecord:
        return self.store.find_task(task_id)

    def reconcile(self, task: TaskRecord) -> TaskRecord:
        return task  # its runs are this test's: none of them died

    async def cancel(self, task_id: str) -> TaskRecord:
        return self.store.update_task(task_id, status="cancelled")

    def detach(self, task_id: str) -> None:
        pass

    async def halt(self, task_id: str, target: str, reason: str) -> TaskRecord:
        with self.events(self.store.get_task(task_id)) as log:
            log.emit(Phase(phase=str(target), detail=reason))
        return self.store.update_task(task_id, status=str(target), error_message=reason)


def setup(
    tmp_path: Path, limits: Mapping[str, int], **settings: Any
) -> tuple[Store, ScriptedService, Scheduler]:
    """A store, a scripted service and a scheduler with per-provider ``limits``."""
    store = Store.open(tmp_path)
    service = ScriptedService(store)
    values = SchedulerSettings.model_validate({"backoff_base_s": 0.05, **settings})
    scheduler = Scheduler(service, values, lambda name: limits.get(name, 0))  # type: ignore[arg-type]
    return store, service, scheduler


async def until(check: Any, timeout: float = 10) -> None:
    """Wait until ``check()`` is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


CREDENTIALS = ".claude/.credentials.json"
"""Where a run installs the credential file of :func:`credentialed`'s config."""


def credentialed(tmp_path: Path, home: Path) -> tuple[Store, TaskService]:
    """A store and task service over ``home`` whose config installs a credential file at
    :data:`CREDENTIALS` in each run's session."""
    source = tmp_path / "credentials.json"
    source.write_text('{"token": "t"}')
    config = HalConfig(home=home, credentials=[CredentialFile(source=source, target=CREDENTIALS)])
    store = Store.open(home)
    return store, TaskService(config, store, {})
