"""Counting a run's thread hops (each hop to the default executor is a thread
wake-up and a GIL hand-over on the task's way)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def hop_counter(hops: list[str]) -> Callable[..., Any]:
    """A ``BaseEventLoop.run_in_executor`` that appends each hop's function's qualified name
    to ``hops`` (``to_thread``'s ``partial(context.run, func, ...)`` and a partial of it
    unwrapped), then hops; to set with ``monkeypatch``."""
    run_in_executor = asyncio.base_events.BaseEventLoop.run_in_executor

    def counted(self: Any, executor: Any, func: Any, *args: Any) -> Any:
        inner = getattr(func, "args", None)
        target = inner[0] if inner else func
        hops.append(getattr(getattr(target, "func", target), "__qualname__", repr(func)))
        return run_in_executor(self, executor, func, *args)

    return counted
