"""``python slow_git.py ARGS...``: host git, ten seconds late (what the clone of a big
repository is to :mod:`tests.cli.killed_hal`'s ``clone_running``). Test-only; one process
throughout (it execs git), so a signal meant for hal's git reaches it."""

from __future__ import annotations

import os
import sys
import time

time.sleep(10)
os.execvp("git", ["git", *sys.argv[1:]])
