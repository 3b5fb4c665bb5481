"""Task records for the store tests."""

from __future__ import annotations

from typing import Any

from hal9999.store import TaskRecord


def make_task(task_id: str, created_at: float = 1000.0, **overrides: Any) -> TaskRecord:
    """A queued task record ``task_id`` with ``overrides``."""
    fields: dict[str, Any] = {
        "id": task_id,
        "prompt": "fix the bug",
        "agent": "claude",
        "provider": "bwrap",
        "process_manager": "tmux",
        "repo": "/src/project",
        "repo_kind": "local",
        "branch": f"hal/{task_id}",
        "status": "queued",
        "created_at": created_at,
        "session_dir": f"/home/sessions/{task_id}",
    }
    fields.update(overrides)
    return TaskRecord(**fields)
