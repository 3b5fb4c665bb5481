"""Telling the LLM gateway that a task came to rest, from whichever process put it there.

Kept apart from :mod:`hal9999.gateway.channel` (asyncio, the grant's model) so that every
resting transition, an in-process run's included, pays only for a socket: the import pin
of ``tests/cli/test_run_imports.py`` holds it to that.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket

from hal9999.gateway.lock import GATEWAY_DIR
from hal9999.unixsock import connect

CONTROL_SOCK = "control.sock"
"""Its host-only control socket, in the gateway's directory."""


def tell_rested(home: str | os.PathLike[str], task_id: str) -> None:
    """Tell the gateway of ``home``, if one runs, that ``task_id`` came to rest: it withdraws
    the task's grants at once (a runner killed before it could withdraw its own) rather than
    at its next check. Never blocks, never raises, waits for no answer: a gateway that is
    not there, or whose socket's queue is full, is left to that check."""
    line = json.dumps({"op": "rested", "task_id": task_id}) + "\n"
    flags = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, flags) as sock:
        connect(sock, os.path.join(home, GATEWAY_DIR, CONTROL_SOCK))  # a deep home's, too
        sock.send(line.encode())
