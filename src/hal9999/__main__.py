"""``python -m hal9999`` runs the ``hal`` command."""

import os
import sys

if sys.path and not sys.flags.safe_path and sys.path[0] in ("", os.getcwd()):
    # ``-m`` put the working directory first on the path: a repository's own ``typing.py``
    # (an agent's branch checked out, say) would be imported in place of the standard
    # module, and run as hal. hal imports nothing from there (the console script never did).
    del sys.path[0]

from hal9999.cli.entry import main

main()
