"""The start of a supervisor's command line (:mod:`hal9999.process.supervisor`) and the fork
server's, in a module of their own: the in-process ``hal run`` opens its tmux pane with it
before it imports the rest (:mod:`hal9999.process.tmuxearly`)."""

from __future__ import annotations

import os
import sys

import hal9999

_PACKAGES = os.path.dirname(os.path.dirname(hal9999.__file__))
SUPERVISOR = (
    sys.executable,
    # Isolated (no current directory or PYTHON* variables on its path) and without `site`
    # (its start-up is a fifth of the interpreter's): the supervisor finds hal9999 where this
    # process did, after the standard library, and loads `site` itself only for a parser or
    # mask files, whose models need the installed packages.
    "-I",
    "-S",
    "-c",
    f"import sys; sys.path.append({_PACKAGES!r}); "
    "from hal9999.process.supervisor import main; main()",
)
"""The start of the supervisor's command line; its options and the command follow."""

FORK_SERVER = (
    sys.executable,
    "-I",
    "-S",
    "-c",
    f"import sys; sys.path.append({_PACKAGES!r}); "
    "from hal9999.process.forkserver import main; main()",
)
"""The command line of :mod:`hal9999.process.forkserver` (the socket's fd follows), started
as the supervisor is."""
