"""``hal task logs ID`` (without ``--follow``) in process, read without click and pydantic.

The click command (:mod:`hal9999.cli.task`) loads the layered config, finds the record
through the store's models and prints the session's ``agent.log`` through
:func:`hal9999.cli.echo.stream_to_terminal`: ~0.3 s of a start for a file's copy. This path
finds the record as the thin ``hal task show`` does (:func:`task_show.thin_task`: the same
rule for the config, the store, the daemon, a task to reconcile, an unknown id or an
ambiguous prefix, all left to click) and prints the log through the same sanitiser. It is
taken only where that is exactly what the click command prints:

- the arguments are one id click reads as the argument (no ``--follow``, no option);
- the task is not in flight (a running task's log grows: click answers it, as before);
- the log is missing (nothing printed, as click) or opens; one that does not open is the
  full path's to word.

Anything else returns before printing, and click runs the command.
"""

from __future__ import annotations

import os
import sys

from hal9999.cli.task_rows import here

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO

LOG_NAME = "agent.log"
""":attr:`hal9999.tasks.session.Session.log`'s name (``tests/cli/test_task_logs_thin.py``)."""
IN_FLIGHT = frozenset({"queued", "provisioning", "preparing", "running", "collecting"})
""":data:`hal9999.tasks.state.ACTIVE`'s values (the same test checks them)."""
CHUNK = 1 << 20
"""As the click command reads the log: 1 MiB of characters at a time."""


def logs_args(argv: Sequence[str]) -> str | None:
    """The id of ``hal task logs ARGV`` when click would read it so and no option is given;
    None for anything else."""
    if len(argv) != 1 or argv[0].startswith("-"):
        return None
    return argv[0]


def thin_log(task_id: str) -> IO[str] | None:
    """The task's log opened as the click command opens it, an empty stream when the task
    has none (nothing printed, as click); None when the full path must answer."""
    from hal9999.cli.task_show import thin_task

    doc = thin_task(os.environ, here(), task_id)
    if doc is None or doc["status"] in IN_FLIGHT:
        return None
    log = os.path.join(doc["session_dir"], LOG_NAME)
    if not os.path.exists(log):  # as Path.exists: a log it cannot stat is no log
        import io

        return io.StringIO()
    try:
        return open(log, encoding="utf-8", errors="replace")  # closed by the caller
    except OSError:
        return None  # click's command words it (a HomeError)


def logs_without_click(argv: Sequence[str]) -> None:
    """``hal task logs ARGV`` when :func:`thin_log` answers: print as the click command and
    exit 0 (a reader gone: 141, quietly); return having printed nothing otherwise."""
    if sys.stdout is None or (sys.stdout.encoding or "").lower() not in ("utf-8", "utf8"):
        return  # click's echo copes with such a stream
    try:
        task_id = logs_args(argv)
        handle = None if task_id is None else thin_log(task_id)
        if handle is None:
            return
        from hal9999.cli.echo import end_terminal_stream, stream_to_terminal
        from hal9999.cli.entry import exit_after
    except Exception:
        return

    def stream() -> None:
        with handle:
            while chunk := handle.read(CHUNK):
                stream_to_terminal(chunk)
        end_terminal_stream()  # nothing when nothing was streamed

    exit_after(stream)
