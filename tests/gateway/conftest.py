"""Gateway tests reuse the end-to-end fixtures: a private HAL_HOME, the bug repo, the scripted
LLM server and a per-test dummy key in the host variable the config names."""

from __future__ import annotations

from tests.e2e.conftest import bug_repo, dummy_key, hal_cli, llm_server

__all__ = ["bug_repo", "dummy_key", "hal_cli", "llm_server"]
