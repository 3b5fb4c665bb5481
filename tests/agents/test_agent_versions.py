"""The CLI versions hal is tested with agree with what scripts/install-agents.sh pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hal9999.agents.registry import resolve_agent

INSTALLER = Path(__file__).resolve().parents[2] / "scripts" / "install-agents.sh"
PINNED = {
    name.lower(): version
    for name, version in re.findall(r"^([A-Z]+)_VERSION=(\S+)$", INSTALLER.read_text(), re.M)
}


def test_the_installer_pins_every_installable_agent() -> None:
    assert set(PINNED) == {"claude", "codex", "opencode", "gemini", "aider"}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_preset_names_the_pinned_version(name: str) -> None:
    agent = resolve_agent(name)
    assert getattr(agent, "tested_version", None) == PINNED[name]
    assert PINNED[name] in agent.install_hint


def test_goose_names_no_tested_version() -> None:
    assert getattr(resolve_agent("goose"), "tested_version", None) is None
