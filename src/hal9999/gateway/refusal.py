"""How the gateway says no, and how often a task hears it.

A refusal is shaped like the upstream's own errors, so each agent CLI shows its message:
Gemini's ``{"error": {"code": 400, "message", "status"}}`` for ``/v1beta/...`` paths, and
otherwise one body that Anthropic's and OpenAI's clients both read (``type: error`` with
``error.type`` and ``error.message``; OpenAI's ``error.code`` as a string). Budget and model
refusals are 400/403: the agent CLIs retry 429 and 5xx, but give up on these at once.
"""

from __future__ import annotations

import json
import logging

from hal9999.gateway.wire import Answer

logger = logging.getLogger(__name__)


def error_body(status: int, code: str, text: str, path: str = "") -> bytes:
    """The JSON error body of a refusal, in the dialect of the API ``path`` belongs to."""
    if path.startswith(("/v1beta/", "/v1alpha/")) or ":generateContent" in path:
        payload: dict[str, object] = {
            "error": {"code": status, "message": text, "status": "FAILED_PRECONDITION",
                      "details": [{"reason": code}]}
        }  # fmt: skip
    else:
        payload = {
            "type": "error",
            "error": {"type": "invalid_request_error", "code": code, "message": text},
        }
    return json.dumps(payload).encode()


async def send(out: Answer, status: int, code: str, text: str, *, path: str = "",
               headers: list[tuple[str, str]] | None = None) -> None:  # fmt: skip
    """Answer a refusal whole: ``text`` in the dialect of the API ``path`` belongs to."""
    data = error_body(status, code, text, path)
    await out.whole(status, [("content-type", "application/json"), *(headers or [])], data)


REFUSALS_PER_MINUTE = 10
"""A task's refused calls stored per minute. An agent looping on a refusal would otherwise
add a row to the store per call, without bound."""


class RefusalLimit:
    """Counts each task's refusals by minute: the first :data:`REFUSALS_PER_MINUTE` are
    answered and stored as they are; past them the agent is answered 429 with the time left
    in the minute, and only the first such answer of the minute is stored (the operator
    sees that the task was throttled; the gateway's log says how many calls were)."""

    def __init__(self) -> None:
        self._minutes: dict[str, tuple[float, int]] = {}
        """By task: when its minute began, and its refusals in it so far."""

    def count(self, task_id: str, now: float) -> tuple[int, float]:
        """Count one refusal of ``task_id``: how many the minute holds with it, and the
        seconds left in the minute."""
        began, seen = self._minutes.get(task_id, (0.0, 0))
        if now - began >= 60:
            _report(task_id, seen)
            began, seen = now, 0
        self._minutes[task_id] = (began, seen + 1)
        return seen + 1, max(1.0, 60 - (now - began))

    async def answer(self, out: Answer, task_id: str, now: float, status: int, code: str,
                     text: str, path: str = "") -> tuple[int, str] | None:  # fmt: skip
        """Answer a refusal of ``task_id``'s call, or 429 when the task was refused too
        often this minute: the status and code to store, or None when it is not stored."""
        seen, wait_s = self.count(task_id, now)
        headers = []
        if seen > REFUSALS_PER_MINUTE:
            text = (
                f"hal gateway: this task's calls were refused {REFUSALS_PER_MINUTE}"
                f" times this minute (the last: {code}); try again in {wait_s:.0f} s"
            )
            status, code = 429, "too_many_refusals"
            headers.append(("retry-after", f"{wait_s:.0f}"))
        await send(out, status, code, text, path=path, headers=headers)
        return (status, code) if seen <= REFUSALS_PER_MINUTE + 1 else None

    def forget(self, task_id: str) -> None:
        """The task's grant is withdrawn: drop its count."""
        _report(task_id, self._minutes.pop(task_id, (0.0, 0))[1])


def _report(task_id: str, seen: int) -> None:
    if seen > REFUSALS_PER_MINUTE + 1:
        logger.warning(
            "gateway: task %s had %d refused calls in a minute; %d were answered "
            "429 and not stored",
            task_id,
            seen,
            seen - REFUSALS_PER_MINUTE - 1,
        )
