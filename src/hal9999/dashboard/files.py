"""Files of a task the dashboard shows that the JSON API does not carry: the result patch,
as a reviewer sees it (:mod:`hal9999.tasks.reviewdiff`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from hal9999.agentfs import AgentDir
from hal9999.errors import HalError, TaskStateError, UnsafePath
from hal9999.tasks.reviewdiff import review_text
from hal9999.tasks.session import Session

if TYPE_CHECKING:
    from starlette.responses import Response

    from hal9999.server.daemon import Daemon

PATCH_LIMIT = 8 << 20
"""Largest patch the page renders (a bigger one is for `hal task diff`)."""


def _read_patch(daemon: Daemon, task_id: str) -> tuple[str, str | None]:
    """The task's id and its patch with its secrets masked (None when it has none yet)."""
    record = daemon.service.find(task_id)
    patch = Session(Path(record.session_dir)).patch
    # The session directory is bound into sandboxes: open it without following links.
    with AgentDir.open(patch.parent, label=f"session of {record.id}") as session:
        if session.kind(patch.name) is None:
            return record.id, None
        data = session.read_bytes(patch.name, limit=PATCH_LIMIT)
    masked = daemon.service.shown_patch(record, data.decode("utf-8", "replace"))
    return record.id, review_text(masked)


async def task_patch(daemon: Daemon, task_id: str) -> Response:
    """The task's patch as text (secrets masked), or a JSON error naming the problem."""
    from starlette.responses import JSONResponse, PlainTextResponse

    try:
        found, data = await asyncio.to_thread(_read_patch, daemon, task_id)
    except (UnsafePath, TaskStateError) as exc:
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, 409)
    except HalError as exc:
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, 404)
    if data is None:
        message = f"task {found} has no patch yet"
        return JSONResponse({"error": {"code": "no_patch", "message": message}}, 404)
    return PlainTextResponse(data)
