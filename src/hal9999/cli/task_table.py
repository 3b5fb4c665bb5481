"""The ``hal task list`` table and the end-of-run summary, light: no pydantic, so the thin
paths (:mod:`hal9999.cli.task_list`, :mod:`hal9999.cli.daemon_run`) can render store rows
and the daemon's JSON without hal's model classes. And how a foreground ``hal run`` ends
(:func:`run_end`): its exit status, and the line that says why when another command ended
its task, one rule for every way a run is followed (in-process, through ``hal serve``,
``--events``)."""

from __future__ import annotations

import os
import sys
import time

from hal9999.errors import TaskCancelled, TaskNotFound, TaskStateError, exit_status_for
from hal9999.tasks.branchmade import BRANCH_MARKS as BRANCH_MARKS
from hal9999.tasks.branchmade import branch_made
from hal9999.visible import BIDI_CONTROLS as BIDI_CONTROLS
from hal9999.visible import INVISIBLE as INVISIBLE
from hal9999.visible import SPELLED_OUT as SPELLED_OUT

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from typing import NoReturn, Protocol
else:
    from hal9999.lighttyping import Protocol


class TaskRow(Protocol):
    """What the table reads of a task: a store record or the thin path's plain row."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def finished_at(self) -> float | None: ...


class TaskSummary(TaskRow, Protocol):
    """What the end-of-run summary reads: a store record, or the daemon's JSON of one."""

    @property
    def exit_code(self) -> int | None: ...
    @property
    def repo(self) -> str: ...
    @property
    def ref(self) -> str | None: ...
    @property
    def repo_kind(self) -> str: ...
    @property
    def branch(self) -> str: ...
    @property
    def files_changed(self) -> int: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def session_dir(self) -> str: ...
    @property
    def issue(self) -> str | None: ...


_CONTROLS = {**dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)], "?"), **SPELLED_OUT}
"""Control characters (C0, DEL, C1): shown as ``?``, never sent to the terminal; the
bidirectional and invisible ones spelled out."""


_UNSAFE = frozenset(map(chr, [*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), *SPELLED_OUT]))
"""What :func:`hal9999.cli.output.sanitize` acts on: every escape sequence starts with ESC,
one of these; and the bidirectional controls and invisible characters."""


def sanitized(text: str) -> str:
    """``output.sanitize(text)``, importing that module (~250 of a thin command's start-up's
    modules' worth of ``re``, ``pathlib`` and ``typing``) only for a text it would change."""
    if _UNSAFE.isdisjoint(text):
        return text
    from hal9999.cli.output import sanitize

    return sanitize(text)


def one_line(text: str) -> str:
    """``text`` on one line with no control character: a prompt a hive agent gave its
    sub-task (``run_task``) reached the operator's terminal raw in ``hal task list``, an
    escape sequence in it (a title, OSC 52's clipboard write) obeyed, and an agent command
    holding a line break split the line that names a run."""
    return " ".join(text.split()).translate(_CONTROLS)


def short(text: str, limit: int = 100) -> str:
    """``text`` on one line (:func:`one_line`), cut to ``limit`` characters with an
    ellipsis."""
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration(task: TaskRow) -> str:
    """How long the task ran (or has been running)."""
    if task.started_at is None:
        return "-"
    end = task.finished_at or time.time()
    seconds = max(0.0, end - task.started_at)
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def age(ts: float) -> str:
    """A compact 'time ago'."""
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def task_table(tasks: list[TaskRow]) -> str:
    """The ``hal task list`` table."""
    rows = [("ID", "STATUS", "AGENT", "PROVIDER", "AGE", "TIME", "PROMPT")]
    for t in tasks:
        agent = short(t.agent, 16)
        rows.append(
            (
                t.id,
                t.status,
                agent,
                t.provider,
                age(t.created_at),
                duration(t),
                short(t.prompt, 40),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )


_ENDED = {"succeeded": "succeeded", "failed": "failed", "cancelled": "was cancelled",
          "timed_out": "timed out"}  # fmt: skip
"""The states a run ends in for good (``tasks.state``: no resume brings it back), as said."""


def branch_shown(task: TaskSummary) -> str:
    """The summary's branch: its name only once it was made; else that none was, and why."""
    if branch_made(task.repo_kind, task.session_dir):
        return task.branch
    if task.status not in _ENDED:
        return f"none yet ({task.branch} is made when the task's work is brought back)"
    why = f"the task {_ENDED[task.status]} before its work was brought back"
    return f"none: no branch was made ({why})"


def summary(task: TaskSummary) -> str:
    """The block printed when a run ends, and by ``hal task show``."""
    lines = [
        f"task      {task.id}",
        f"status    {task.status}"
        + (f" (exit {task.exit_code})" if task.exit_code is not None else ""),
        f"agent     {one_line(task.agent)} on {task.provider}",
        f"repo      {one_line(task.repo)}" + (f" @ {one_line(task.ref)}" if task.ref else ""),
        *([f"issue     {one_line(task.issue)}"] if task.issue else []),
        f"branch    {branch_shown(task)}",
        f"duration  {duration(task)}",
        f"files     {task.files_changed} changed",
    ]
    if task.input_tokens or task.output_tokens:
        lines.append(f"tokens    {task.input_tokens} in, {task.output_tokens} out")
    if task.cost_usd is not None:
        lines.append(f"cost      ${task.cost_usd:.4f}")
    if task.error_message:
        # The agent can write into it (git's messages from collection, a bundle's ref names):
        # cleaned as any viewer cleans the agent's output, and its later lines indented under
        # this one: flush left, its "\nstatus    succeeded" read as the block's own field.
        error = sanitized(task.error_message).strip("\n").replace("\r", "")
        lines.append("error     " + error.replace("\n", "\n" + " " * 10))
    lines.append(f"session   {task.session_dir}")
    return "\n".join(lines)


def run_end(task_id: str, status: str, error_code: str | None, exists: bool) -> tuple[int, str]:
    """The exit status of a run whose task ended ``status`` (``error_code``: its error's),
    and the ``hal: ...`` line to print first ("" when the summary says it all). ``exists``:
    whether the task's record is still there (a ``hal task rm`` elsewhere removes it)."""
    if not exists:
        return TaskNotFound.exit_status, (
            f"hal: task {task_id} was removed by another command (`hal task rm`) while it "
            "ran; nothing of it is kept"
        )
    if status == "succeeded":
        return 0, ""
    if error_code is None and status == "stopped":
        return TaskStateError.exit_status, (
            f"hal: task {task_id} was stopped by another command (`hal task stop`); its "
            f"session is kept: `hal task resume {task_id}` goes on"
        )
    if error_code is None and status == "cancelled":
        return TaskCancelled.exit_status, (
            f"hal: task {task_id} was cancelled by another command (`hal task cancel`, or "
            "`hal task rm`, which cancels it first)"
        )
    return exit_status_for(error_code) or 1, ""


def kept(session_dir: str, recorded: bool) -> bool:
    """Whether a task that ended is still there: ``recorded`` (its record was found) and its
    session directory too (``hal task rm`` removes the session first, the record last: a run
    that ended of the removal can find its record still there)."""
    return recorded and os.path.isdir(session_dir)


def removed(task_id: str) -> NoReturn:
    """End a run whose task was removed while it was followed (its record, asked for at the
    end, was not found): the line that says so, status 3."""
    from hal9999.cli.echo import echo

    status, line = run_end(task_id, "", None, False)
    echo(line, err=True)
    sys.exit(status)
