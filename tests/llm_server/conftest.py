"""Makes the `llm_server` fixture available to the tests in this package."""

from .fixture import llm_server

__all__ = ["llm_server"]
