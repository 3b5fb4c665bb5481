"""Restart a test sshd (SIGHUP: ``sshd -D`` re-executes itself) and wait until the new one
listens, for the fakes that change its host key (``do_api``'s cloud-init, ``limactl``'s
provisioning). Standard library only: ``limactl.py`` runs as a script.

The wait is for the real condition: the socket listening on the port in sshd's network
namespace (``/proc/PID/net/tcp``) is a new one. A fixed pause (0.2-0.3 s) before probing
the port was slower, and under load could still find the old listener, not yet closed."""

from __future__ import annotations

import os
import signal
from time import monotonic, sleep

LISTEN = "0A"
"""``st`` of a listening socket in ``/proc/net/tcp``."""


def listener(pid: int, port: int) -> str | None:
    """The inode of the socket listening on ``port`` in ``pid``'s network namespace."""
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return fields[9]
    return None


def reload_sshd(pid: int, port: int = 22, timeout: float = 20.0) -> None:
    """SIGHUP the sshd ``pid``, then wait until it listens on ``port`` on a new socket."""
    before = listener(pid, port)
    os.kill(pid, signal.SIGHUP)
    deadline = monotonic() + timeout
    while True:
        now = listener(pid, port)
        if now is not None and now != before:
            return
        if monotonic() > deadline:
            raise RuntimeError(f"sshd {pid} did not listen again on port {port}")
        sleep(0.005)
