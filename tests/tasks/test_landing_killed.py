"""A bring-back killed after it moved the branch, before it noted that it did: the next run
of the same task moves the branch on, and does not call it changed outside hal."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.bringback import World
from tests.tasks.conftest import BRANCH, TASK, git

from hal9999.redact import SecretMasker
from hal9999.tasks import bringback, gitrepo, landing


@pytest.fixture
async def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    await w.clone()
    return w


class Killed(BaseException):
    """hal dying (SIGKILL) at this point: nothing after it runs."""


async def killed_at(
    world: World, head: str, monkeypatch: pytest.MonkeyPatch, module: object, name: str
) -> None:
    """Bring ``head`` back, dying where ``module.name`` would run."""

    async def die(*args: object) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(module, name, die)
        with pytest.raises(Killed):
            await world.bring_back(head)


async def killed_before_the_note(world: World, head: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bring ``head`` back, dying once the branch moved and before hal notes it."""
    await killed_at(world, head, monkeypatch, landing, "_landed")
    assert git(world.source, "rev-parse", BRANCH) == head, "the branch moved"


@pytest.mark.parametrize("first", [True, False])  # the branch created, or moved on
async def test_a_branch_moved_by_a_killed_run_is_moved_on_by_the_next(
    world: World, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    if not first:
        earlier = world.agent_commits({"a.txt": "two\n"})
        world.bundle()
        await world.bring_back(earlier)
    killed = world.agent_commits({"b.txt": "killed\n"})
    world.bundle()
    await killed_before_the_note(world, killed, monkeypatch)
    # The task resumed with a new prompt: its agent goes on from the same checkout.
    again = world.agent_commits({"c.txt": "again\n"})
    world.bundle()
    brought = await world.bring_back(again)
    assert isinstance(brought, landing.BroughtBack)
    assert (brought.branch, brought.moved_aside, brought.why) == (BRANCH, False, "")
    assert git(world.source, "rev-parse", BRANCH) == again


async def test_a_branch_another_task_left_is_still_not_moved(world: World) -> None:
    # Two tasks given the same --branch: the first's result is not this one's to move.
    theirs = world.agent_commits({"a.txt": "theirs\n"})
    world.bundle()
    await bringback.bring_back(
        gitrepo.RepoSource("local", str(world.source)), world.session, task_id="othertask",
        branch=BRANCH, head=theirs, base=world.base, masker=SecretMasker(),
    )  # fmt: skip
    world.session.brought_back.unlink()  # this task's session never noted the branch
    ours = world.agent_commits({"b.txt": "ours\n"})
    world.bundle()
    brought = await world.bring_back(ours)
    assert isinstance(brought, landing.BroughtBack)
    assert brought.moved_aside and brought.branch == f"{BRANCH}-2"
    assert git(world.source, "rev-parse", BRANCH) == theirs


@pytest.mark.parametrize("next_run", ["unchanged", "quarantined"])
async def test_a_private_ref_a_killed_run_left_goes_with_the_next_landing(
    world: World, monkeypatch: pytest.MonkeyPatch, next_run: str
) -> None:
    # Killed between the fetch and the branch's move: the fetched result waits in the
    # private ref. A resumed run that fetches nothing into it (its agent undid everything;
    # or the task now has secrets, and its result waits in a quarantine) still lands, and
    # takes the ref with it: it is not left behind for good.
    killed = world.agent_commits({"b.txt": "killed\n"})
    world.bundle()
    incoming = f"refs/hal-incoming/{TASK}"

    await killed_at(world, killed, monkeypatch, bringback, "move_branch")
    # What SIGKILL leaves, which no `finally` of hal's tidies: the fetched result in the ref.
    git(world.source, "update-ref", incoming, killed)
    masker = SecretMasker()
    if next_run == "unchanged":
        git(world.session.workspace, "reset", "-q", "--hard", world.base)
        head = world.base
    else:
        masker.add("s3cr3t-Value-77")
        head = world.agent_commits({"c.txt": "again\n"})
        world.bundle()
    brought = await world.bring_back(head, masker)
    assert isinstance(brought, landing.BroughtBack) and brought.branch == BRANCH
    assert git(world.source, "rev-parse", BRANCH) == head
    assert git(world.source, "for-each-ref", "refs/hal-incoming/") == ""
