"""What the hive's kill-after-a-commit tests share (test_threads_crash, test_agents_crash):
python source run in a process killed (SIGKILL) right after its N-th store commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

# Opens `store` on the home at argv[1] (`home`), with `thread` = argv[2]; the process is
# killed -9 right after its argv[3]-th store commit (never, for 0). What follows it uses them.
KILLED_AFTER_A_COMMIT = textwrap.dedent(
    """
    import asyncio, contextlib, os, signal, sys
    from pathlib import Path
    from hal9999.store import Store

    home, thread, after = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    real = Store._write
    commits = 0

    @contextlib.contextmanager
    def write(self, **kwargs):
        global commits
        with real(self, **kwargs) as conn:
            yield conn
        commits += 1
        if commits == after:
            os.kill(os.getpid(), signal.SIGKILL)

    Store._write = write
    store = Store.open(home)
    """
)


def killed(home: Path, action: str, thread: str, after: int) -> subprocess.CompletedProcess[str]:
    """Run ``action`` (python source using ``store``, ``home`` and ``thread``) on ``home``,
    killed after its ``after``-th commit; it either finished or was killed, nothing else."""
    run = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_A_COMMIT + action, str(home), thread, str(after)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode in (0, -signal.SIGKILL), run.stderr
    return run
