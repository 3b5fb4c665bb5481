"""How a command ends when its standard output is closed, and when its reader has gone."""

from __future__ import annotations

import os
import subprocess
from typing import Any


def closed_and_broken(argv: list[str], **run: Any) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """(exit code, stderr) of ``argv`` run with descriptor 1 closed, then with it a pipe
    whose reading end is closed (a reader that went away: EPIPE at the first write)."""
    closed = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=False,
        preexec_fn=lambda: os.close(1), **run,
    )  # fmt: skip
    read, write = os.pipe()
    os.close(read)
    try:
        broken = subprocess.run(
            argv, stdout=write, stderr=subprocess.PIPE, timeout=60, check=False, **run
        )
    finally:
        os.close(write)
    return (closed.returncode, closed.stderr), (broken.returncode, broken.stderr)
