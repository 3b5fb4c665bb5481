"""A provider's fork, all or none (``providers.base.fork_all``, shared by docker, qemu and
morph)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hal9999.errors import ConfigError
from hal9999.providers.base import fork_all
from hal9999.spec import SandboxSpec


async def test_a_failed_copy_undoes_the_others_and_raises_the_first_error() -> None:
    made: list[str] = []
    destroyed: list[str] = []

    async def create(spec: SandboxSpec) -> Any:
        assert spec.image == "snap1"
        if len(made) == 1:
            made.append("failed")
            raise RuntimeError("no room")
        made.append(f"sb{len(made)}")
        return SimpleNamespace(id=made[-1])

    async def destroy(sandbox_id: str) -> None:
        destroyed.append(sandbox_id)

    with pytest.raises(RuntimeError, match="no room"):
        await fork_all(create, destroy, "snap1", 3, SandboxSpec(provider="fake"))
    assert sorted(destroyed) == sorted(m for m in made if m != "failed") and destroyed


async def test_every_copy_comes_back_and_a_count_below_one_is_refused() -> None:
    async def create(spec: SandboxSpec) -> Any:
        return SimpleNamespace(id=spec.image)

    async def destroy(sandbox_id: str) -> None:
        raise AssertionError("nothing to undo")

    made = await fork_all(create, destroy, "snap1", 3, SandboxSpec(provider="fake"))
    assert [s.id for s in made] == ["snap1"] * 3
    with pytest.raises(ConfigError, match="at least 1"):
        await fork_all(create, destroy, "snap1", 0, SandboxSpec(provider="fake"))
