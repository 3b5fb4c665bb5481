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
    from hal9999.store import TaskRecord

PATCH_LIMIT = 8 << 20
"""Largest patch the page renders (a bigger one is for `hal task diff`)."""


def _read_patch(record: TaskRecord) -> str | None:
    """The task's patch as written (None when it has none yet)."""
    patch = Session(Path(record.session_dir)).patch
    # The session directory is bound into sandboxes: open it without following links.
    with AgentDir.open(patch.parent, label=f"session of {record.id}") as session:
        if session.kind(patch.name) is None:
            return None
        data = session.read_bytes(patch.name, limit=PATCH_LIMIT)
    return data.decode("utf-8", "replace")


async def task_patch(daemon: Daemon, task_id: str) -> Response:
    """The task's patch as text (secrets masked), or a JSON error naming the problem."""
    from starlette.responses import JSONResponse, PlainTextResponse

    try:
        record = await daemon.tasks.get(task_id)
        text = await asyncio.to_thread(_read_patch, record)
        data = None if text is None else review_text(await daemon.tasks.shown_patch(record, text))
    except (UnsafePath, TaskStateError) as exc:
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, 409)
    except HalError as exc:
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, 404)
    if data is None:
        message = f"task {record.id} has no patch yet"
        return JSONResponse({"error": {"code": "no_patch", "message": message}}, 404)
    return PlainTextResponse(data)
