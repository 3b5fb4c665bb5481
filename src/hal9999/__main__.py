"""``python -m hal9999`` runs the ``hal`` command."""

import os
import sys

try:
    _here = os.getcwd()
except OSError:  # deleted under us: hal says so in one line (cli/workdir), not a traceback
    _here = ""
if sys.path and not sys.flags.safe_path and sys.path[0] in ("", _here):
    # ``-m`` put the working directory first on the path: a repository's own ``typing.py``
    # (an agent's branch checked out, say) would be imported in place of the standard
    # module, and run as hal. hal imports nothing from there (the console script never did).
    del sys.path[0]

from hal9999.cli.entry import main

main()
