"""``hal doctor`` asks every registered provider's ``doctor`` hook, a plugin's as a built-in's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.cli.quick_agents import quick_agents_path
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

PLUGIN = '''
from hal9999.providers.doctor import Check


class PlugProvider:
    """A third-party provider with a doctor hook and nothing else hal doctor needs."""

    name = "plugdoc"

    def __init__(self, *, state_dir):
        self.state_dir = state_dir

    @staticmethod
    async def doctor(scope):
        where = "no state dir" if scope.state_dir is None else scope.state_dir.name
        return [Check("plugdoc", True, f"hook of {scope.name} ({where})", required=False)]
'''


def plugin_path(tmp_path: Path) -> str:
    """A directory for PYTHONPATH holding a package that registers provider ``plugdoc``."""
    root = tmp_path / "plugins"
    dist = root / "halplug_doctor-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: halplug-doctor\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[hal9999.providers]\nplugdoc = halplug_doctor:PlugProvider\n"
    )
    (root / "halplug_doctor.py").write_text(PLUGIN)
    return str(root)


def names(out: str) -> list[str]:
    return [check["name"] for check in json.loads(out)["checks"]]


def test_doctor_reports_each_providers_hook_with_the_default_provider_first(
    hal: Hal, tmp_path: Path
) -> None:
    env = {
        "PATH": quick_agents_path(tmp_path / "quick-agents", os.environ["PATH"]),
        "PYTHONPATH": os.pathsep.join(filter(None, [plugin_path(tmp_path),
                                                    os.environ.get("PYTHONPATH")])),
    }  # fmt: skip
    out = hal("doctor", "--json", env=env, timeout=120)
    report = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert report["plugdoc"]["detail"] == "hook of plugdoc (plugdoc)", report["plugdoc"]
    assert not report["plugdoc"]["required"]
    assert report["bwrap sandbox"]["required"]  # the built-ins' lines as before
    order = names(out.stdout)
    first_agent = next(i for i, name in enumerate(order) if name.startswith("agent "))
    # bwrap, the default provider, is checked before the agents; the others after them.
    assert order.index("bwrap sandbox") < first_agent < order.index("plugdoc")

    out = hal("doctor", "--json", env={**env, "HAL_PROVIDER": "plugdoc"}, timeout=120)
    order = names(out.stdout)
    first_agent = next(i for i, name in enumerate(order) if name.startswith("agent "))
    assert order.index("plugdoc") < first_agent < order.index("bwrap sandbox")
