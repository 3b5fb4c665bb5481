"""What a command sees in a keeper's namespaces does not depend on the keeper's own /proc:
the keeper mounts none (providers/bwrap/keeper.py ``without_proc``), each command mounts its own
over the mount point, so the same command sees the same mounts and the keeper's network, IPC
and UTS namespaces either way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.security.conftest import primed

from hal9999.providers.bwrap import keeper
from hal9999.providers.bwrap.provider import RUN_DIR, BwrapProvider, BwrapSandbox
from hal9999.spec import SandboxSpec, ShellCommand

pytestmark = pytest.mark.bwrap

SHARED = ("net", "ipc", "uts")


def visible(mountinfo: str) -> list[tuple[str, ...]]:
    """The mounts a path lookup can reach, in order: a mount hides every earlier one at or
    under its mount point. Each as (mount point, root, options, type, source, super
    options): no ids or device numbers, which differ for every new mount."""
    seen: dict[str, tuple[str, ...]] = {}
    for line in mountinfo.splitlines():
        fields, tail = line.split(" - ")
        _, _, _, root, point, options = fields.split()[:6]
        for other in [p for p in seen if p == point or p.startswith(point.rstrip("/") + "/")]:
            del seen[other]
        seen[point] = (point, root, options, *tail.split())
    return list(seen.values())


def keeper_mounts(box: BwrapSandbox) -> list[str]:
    """The mount points in the keeper's own mount namespace."""
    found = keeper.read(box.dir / RUN_DIR)
    assert found is not None
    text = Path(f"/proc/{found.pid}/mountinfo").read_text()
    return [line.split()[4] for line in text.splitlines()]


async def seen(box: BwrapSandbox) -> tuple[list[tuple[str, ...]], bool]:
    """The mounts a command sees, and whether its network, IPC and UTS namespaces are its
    keeper's."""
    script = "cat /proc/self/mountinfo; echo @; readlink " + " ".join(
        f"/proc/self/ns/{name}" for name in SHARED
    )
    result = await box.exec(ShellCommand(script=script), timeout=60)
    assert result.ok, result.stderr.decode()
    mountinfo, namespaces = result.text().split("@\n")
    found = keeper.read(box.dir / RUN_DIR)
    assert found is not None
    theirs = [os.readlink(f"/proc/{found.pid}/ns/{name}") for name in SHARED]
    return visible(mountinfo), namespaces.split() == theirs


async def test_a_command_sees_the_same_whether_its_keeper_mounted_a_proc_or_not(
    provider: BwrapProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    box = await provider.create(SandboxSpec(workspace=tmp_path / "a"))
    now = await primed(provider, box.id)
    # The keeper holds no mount at or under /proc: no proc of its own, no bind of a host
    # /proc writer (six mounts, three of them binds with a mount-table read each, before).
    assert [p for p in keeper_mounts(now) if p == "/proc" or p.startswith("/proc/")] == []
    view, shared = await seen(now)
    assert shared
    monkeypatch.setattr(keeper, "without_proc", list)  # the keeper as a command's bwrap
    before = await primed(provider, box.id)
    assert "/proc/sys" in keeper_mounts(before)
    view_before, shared_before = await seen(before)
    assert shared_before
    assert view == view_before
    points = [mount[0] for mount in view]
    assert "/proc" in points and "/proc/sys" in points and "/workspace" in points
