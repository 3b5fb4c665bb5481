"""The steps of a task's run that cost something only where they are needed: the
submodule step, the supervisor's parser, the launcher's not-installed line, the kinds file, the
template's parses, the checkout beside the sandbox's start and the host gits' transports.
Counted, not timed, so load cannot make these pass or fail."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from tests.support.hal import git
from tests.support.tasks import (
    git_repo,
    make_task,
    pooled_service,
    run_trivial_task,
    trivial_request,
)

from hal9999.providers.base import Sandbox
from hal9999.spec import ArgvCommand
from hal9999.tasks import gitrepo
from hal9999.tasks.context import process_spec
from hal9999.tasks.session import Session


@pytest.mark.bwrap
@pytest.mark.parametrize("submodules", [False, True])
async def test_the_submodule_step_runs_only_for_a_repository_that_has_gitmodules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, submodules: bool
) -> None:
    repo = git_repo(tmp_path / "repo")
    if submodules:  # names no submodule: the step runs and finds nothing to fetch
        (repo / ".gitmodules").write_text("")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "an empty .gitmodules")
    calls: list[str] = []
    original = gitrepo.init_submodules

    async def counted(sandbox: Sandbox) -> str | None:
        calls.append(sandbox.id)
        return await original(sandbox)

    monkeypatch.setattr(gitrepo, "init_submodules", counted)
    await run_trivial_task(tmp_path, repo)
    assert len(calls) == (1 if submodules else 0)


def test_a_command_templates_supervisor_gets_no_parser(tmp_path: Path) -> None:
    session = Session(tmp_path / "s")
    template = make_task(tmp_path, "t1", "running", agent="my-agent {{prompt_file}}")
    preset = make_task(tmp_path, "t2", "running", agent="claude")
    argv = ("true",)
    assert process_spec(template, session, ArgvCommand(argv=argv)).parser is None
    assert process_spec(preset, session, ArgvCommand(argv=argv)).parser == "claude"


def test_only_the_launchers_own_line_with_its_status_means_not_installed(tmp_path: Path) -> None:
    from hal9999.agents.base import AgentSettings
    from hal9999.agents.registry import resolve_agent
    from hal9999.tasks.launch import MISSING_STATUS, missing_program

    agent = resolve_agent("no-such-xyz {{prompt_file}}", AgentSettings())
    log = tmp_path / "agent.log"
    line = b"hal: agent program no-such-xyz is not installed in the sandbox\r\n"
    log.write_bytes(b"earlier run\n" + line)
    error = missing_program(agent, "bwrap", MISSING_STATUS, log, 0)
    assert error is not None and error.code == "agent_missing"
    assert "no-such-xyz" in error.one_line()
    assert missing_program(agent, "bwrap", 1, log, 0) is None  # another status
    log.write_bytes(line + b"then the agent said more\n")
    assert missing_program(agent, "bwrap", MISSING_STATUS, log, 0) is None
    log.write_bytes(line)  # printed by an earlier run, before this one's log start
    assert missing_program(agent, "bwrap", MISSING_STATUS, log, len(line)) is None


def test_a_task_without_variables_records_no_kinds_file(tmp_path: Path) -> None:
    from hal9999.credentials import EnvKinds

    # No empty env-kinds.json is written (a temp file and a rename) for every
    # task; a missing one reads as the same nothing.
    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "fake")
    made = []
    for extra in ({}, {"given_env": {"FLAG": "on"}}):
        request = trivial_request(repo, "fake", **extra)
        made.append(service.create_blocking(request))
    plain, marked = made
    assert not service.env_kinds_path(plain).exists()
    assert EnvKinds.load(service.env_kinds_path(plain)) == EnvKinds()
    assert EnvKinds.load(service.env_kinds_path(marked)) == EnvKinds(literal=["FLAG"])
    store.close()


@pytest.mark.bwrap
@pytest.mark.parametrize("acquired", [True, False])
async def test_a_borrowed_checkout_is_made_while_the_sandbox_is_acquired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, acquired: bool
) -> None:
    # The checkout needs no sandbox, so it is made while one is acquired, not after.
    # A run whose acquire fails meanwhile ends its checkout before it ends (no git left).
    from hal9999.errors import ProviderError

    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    started, ended = asyncio.Event(), asyncio.Event()
    real_clone = gitrepo.clone

    async def clone(*args: Any, **kwargs: Any) -> str:
        started.set()
        try:
            return await real_clone(*args, **kwargs)
        finally:
            ended.set()

    monkeypatch.setattr(gitrepo, "clone", clone)
    source = service.runner.sandboxes
    real_acquire = source.acquire
    seen: list[bool] = []

    async def acquire(*args: Any) -> Any:
        awaited = ended if acquired else started
        with contextlib.suppress(TimeoutError):  # a bound for the code before: it never ends
            await asyncio.wait_for(awaited.wait(), 20)
        seen.append(awaited.is_set())
        if not acquired:
            raise ProviderError("no sandbox today")
        return await real_acquire(*args)

    monkeypatch.setattr(source, "acquire", acquire)
    task = await service.create(trivial_request(repo))
    done = await service.run(task.id)
    store.close()
    assert seen == [True]
    assert ended.is_set()
    assert done.status == ("succeeded" if acquired else "failed"), done.error_message


@pytest.mark.bwrap
async def test_a_command_templates_task_parses_its_template_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A template (split by shlex) built five times a task would be waste: the request's
    # check, the prompt's secrets check and twice at the run's start asked it for an API
    # key variable, which a command template never names; the run's start also read the
    # task's secret names twice. Now the request's check and the run's agent (each checks
    # the template as it is then configured).
    from hal9999.agents.custom import TemplateAgent

    repo = git_repo(tmp_path / "repo")
    store, service, _, _ = pooled_service(tmp_path / "home", "bwrap")
    built: list[str] = []
    real = TemplateAgent.__init__

    def counted(self: TemplateAgent, template: str, *args: Any, **kwargs: Any) -> None:
        built.append(template)
        real(self, template, *args, **kwargs)

    monkeypatch.setattr(TemplateAgent, "__init__", counted)
    candidates: list[str] = []
    real_candidates = type(service)._candidates

    def counted_candidates(self: Any, task: Any) -> Any:
        candidates.append(task.id)
        return real_candidates(self, task)

    monkeypatch.setattr(type(service), "_candidates", counted_candidates)
    task = service.create_blocking(trivial_request(repo))
    done = await service.run(task.id)
    store.close()
    assert done.status == "succeeded", done.error_message
    assert len(built) == 2, built
    assert candidates == [task.id], candidates


@pytest.mark.bwrap
async def test_a_trivial_tasks_host_gits_take_no_asyncio_subprocess_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkout's read-tree and the bring-back's update-ref, each
    # started through asyncio's subprocess transports, would be dear in the daemon's
    # CPU; procs.run_captured reads their pipes and pidfd on the loop (half that).
    transported: list[tuple[Any, ...]] = []
    subprocess_exec = asyncio.base_events.BaseEventLoop.subprocess_exec

    def counted(self: Any, protocol: Any, *argv: Any, **kwargs: Any) -> Any:
        transported.append(argv)
        return subprocess_exec(self, protocol, *argv, **kwargs)

    gits: list[Any] = []
    run_captured = gitrepo.run_captured

    async def captured(argv: Any, **kwargs: Any) -> Any:
        gits.append(argv)
        return await run_captured(argv, **kwargs)

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "subprocess_exec", counted)
    monkeypatch.setattr(gitrepo, "run_captured", captured)
    await run_trivial_task(tmp_path, git_repo(tmp_path / "repo"))
    assert len(gits) >= 2, gits  # the checkout's and the bring-back's, at least
    assert not [a for a in transported if "core.hooksPath=/dev/null" in a], transported
