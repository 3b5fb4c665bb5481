"""Attacks on ``run_task``: a ref as an oracle on other agents' commits, the
spellings of a ref, and sub-tasks' spend against the hive's budget without a gateway."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from tests.hive.mcp_client import call, connect
from tests.support.hive import World, _git_repo


async def test_a_refused_ref_says_nothing_of_what_it_names(world: World, tmp_path: Path) -> None:
    # `ref` is resolved against every ref of the repository: a message search (`:/`), an
    # abbreviated id or a reflog entry finds commits on other agents' branches, the
    # stash. "names no commit" for one that matches nothing and "not yours" for one that
    # matches theirs told the agent, a guess at a time, the words of others' commit
    # messages and their ids. Every refusal now reads the same, whatever the ref names.
    heads = _git_repo(tmp_path, "hal/agent/beta")
    theirs, nothing = heads["hal/agent/beta"], "f" * 40
    probes = [(":/work of hal/agent/beta", ":/nothing committed says this"),
              (theirs[:7], nothing[:7]), (theirs, nothing),
              ("hal/agent/beta@{0}", "hal/agent/gamma@{0}")]  # fmt: skip
    async with connect(world.socks["alpha"]) as alpha:
        for there, absent in probes:
            said = []
            for ref in (there, absent):
                failed, text = await call(alpha, "run_task", prompt="probe", ref=ref)
                assert failed, (ref, text)
                said.append(text.replace(repr(ref), "REF"))
            assert said[0] == said[1], said
    assert world.tasks.created == []


async def test_a_ref_is_judged_by_the_commit_it_names_never_by_its_spelling(
    world: World, tmp_path: Path
) -> None:
    # Spellings of an allowed commit start from that commit's id; a tag that shares its name
    # with another agent's branch is what git resolves first, so the commit judged is the
    # tag's, and that branch spelled out is still refused (held).
    import subprocess

    heads = _git_repo(tmp_path, "hal/agent/beta", "topic")
    subprocess.run(["git", "-C", str(tmp_path), "tag", "hal/agent/beta", heads["main"]], check=True)
    async with connect(world.socks["alpha"]) as alpha:
        failed, text = await call(alpha, "run_task", prompt="copy", ref="refs/heads/hal/agent/beta")
        assert failed and "not yours to start from" in text, text
        for ref in ("main~0", "HEAD", "hal/agent/beta", "refs/heads/topic"):  # four at most
            failed, started = await call(alpha, "run_task", prompt="work", ref=ref)
            assert not failed, (ref, started)
    main, topic = heads["main"], heads["topic"]
    assert [r.ref for r in world.tasks.created] == [main, main, main, topic]


async def test_a_sub_task_no_gateway_measured_counts_what_its_agent_reported(
    world: World, tmp_path: Path
) -> None:
    # Without a gateway (none configured) a sub-task's spend is what its agent reported, as
    # for a turn; the hive's budget counted only gateway rows, so sub-tasks spent past it.
    from hal9999.hive.turns import HiveLoop
    from hal9999.hivesettings import HiveSettings
    from hal9999.store import TaskRecord

    loop = HiveLoop.__new__(HiveLoop)  # its budget check only: no daemon
    loop.store, loop.home = world.store, world.hub.hive.home
    loop.settings = HiveSettings(daily_budget_tokens=1000)
    world.hub.hive.over_budget = loop.over_budget
    async with connect(world.socks["alpha"]) as alpha:
        failed, started = await call(alpha, "run_task", prompt="spend")
        assert not failed, started
    world.store.insert_task(TaskRecord(
        id=started["task"], prompt="p", agent="claude", provider="bwrap", process_manager="tmux",
        repo="/r",
        repo_kind="local", branch="b", status="succeeded", created_at=time.time(),
        session_dir=str(tmp_path), input_tokens=900, output_tokens=300,
    ))  # fmt: skip
    assert "spent 1200 tokens in 24 h" in (loop.over_budget() or "")


async def test_a_ref_that_searches_commit_messages_is_refused_before_any_git(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `:/regex` and `rev^{/regex}` run the agent's regex over commit messages in host git,
    # its own brought-back commits' among them: a back-reference pattern such as `(a*)*\1b`
    # over a message of 200 `a`s ran past 20 s of a host core, with no bound. A ref names a
    # branch, a tag or a commit: a message search is refused before host git runs.
    _git_repo(tmp_path)
    spawned: list[tuple[str, ...]] = []
    original = asyncio.create_subprocess_exec

    async def recorded(*argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        spawned.append(argv)
        return await original(*argv, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recorded)
    async with connect(world.socks["alpha"]) as alpha:
        for ref in (":/base", "main^{/base}", "main^{/}"):
            failed, text = await call(alpha, "run_task", prompt="probe", ref=ref)
            assert failed and "not yours to start from" in text, (ref, text)
    assert spawned == []
    assert world.tasks.created == []
