"""pytest fixture for the scripted LLM server.

Import it where it is needed (`from tests.llm_server.fixture import llm_server`, or a relative
import) or list this module in a `pytest_plugins` of the rootdir conftest. The server starts
with an empty Script; a test sets `llm_server.script = Script(...)` before driving a client.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import ScriptedLLMServer


@pytest.fixture
def llm_server() -> Iterator[ScriptedLLMServer]:
    """A running ScriptedLLMServer on 127.0.0.1, stopped after the test."""
    with ScriptedLLMServer() as server:
        yield server
