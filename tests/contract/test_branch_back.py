"""A run's work comes back as its branch, on every path and provider: the smallest body of
the contract suite (and the check that each path and provider of the harness runs)."""

from __future__ import annotations

import pytest
from tests.contract.conftest import PROVIDERS, TaskPath
from tests.support.hal import git

pytestmark = [pytest.mark.timeout(300)]

FIX = "sh -c \"sed -i 's/a - b/a + b/' calc.py && echo fixed\""
"""A command-template agent that fixes the planted bug."""


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_run_brings_its_branch_back(task_path: TaskPath, provider: str) -> None:
    task = await task_path.api.run(task_path.request("fix it", agent=FIX, provider=provider))

    assert (task.status, task.provider) == ("succeeded", provider), task.error_message
    assert "a + b" in git(task_path.repo, "show", f"{task.branch}:calc.py")
    assert "a - b" in (task_path.repo / "calc.py").read_text(), "the checkout is untouched"
