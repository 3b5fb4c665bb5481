"""The ``hal`` entry point: ``hal --version`` answers before click is imported.

Everything else goes to :func:`hal9999.cli.main.main`. Click alone is most of what a bare
``hal --version`` imported (issue 16, target 4: ``hal --version`` within 40 ms of a bare
interpreter); the line printed is exactly click's ``version_option`` line
(``tests/cli/test_startup.py`` compares them).
"""

from __future__ import annotations

import sys

VERSION_LINE = "hal, version {version}\n"
"""What click's ``version_option(prog_name="hal")`` prints."""


def main() -> None:
    """Run ``hal``."""
    if sys.argv[1:] == ["--version"]:
        from hal9999 import __version__

        sys.stdout.write(VERSION_LINE.format(version=__version__))
        sys.stdout.flush()
        sys.exit(0)
    from hal9999.cli.main import main as full

    full()
