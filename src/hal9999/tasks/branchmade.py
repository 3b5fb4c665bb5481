"""Whether a task's branch was made yet: every surface's task JSON carries it (no import
beyond ``os``: the light CLI path reads it)."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from typing import Any

BRANCH_MARKS = {"local": "run/brought-back.json", "url": "result.bundle"}
"""Per kind of source, the session file that exists once the task's branch was made:
``Session.brought_back`` (a local source's branch moved, its record fsynced with the
status) and ``Session.bundle`` (a URL source's branch); a test keeps them equal."""


def branch_made(repo_kind: str, session_dir: str) -> bool:
    """Whether the task's branch (its ``branch``, the name it uses) was made."""
    mark = BRANCH_MARKS.get(repo_kind)
    return mark is not None and os.path.exists(os.path.join(session_dir, mark))


def with_branch_made(doc: dict[str, Any]) -> dict[str, Any]:
    """A task's JSON (its record's fields) with ``branch_made`` added, after them: every
    surface's ``--json`` and the API's task carry it."""
    doc["branch_made"] = branch_made(doc["repo_kind"], doc["session_dir"])
    return doc
