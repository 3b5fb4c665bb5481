"""The no-loss body of :mod:`tests.contract.test_no_loss` on the Ray provider (a file of its
own: Ray tests share the run's one cluster, in their xdist group)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.contract.conftest import TaskPath
from tests.support.no_loss import stopped_work_is_whole

pytestmark = [pytest.mark.ray, pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow,
              pytest.mark.timeout(420)]  # fmt: skip


async def test_a_stop_keeps_the_work_on_ray(task_path: TaskPath, ray_cluster: Any) -> None:
    # Checkpoints off: the stop's own pull is what brings the work back.
    settings = ray_cluster.settings(checkpoint_s=3600)
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    task_path.config_file.write_text("[providers.ray]\n" + "\n".join(lines) + "\n")
    await stopped_work_is_whole(task_path, "ray")
