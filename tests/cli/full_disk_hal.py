"""``python full_disk_hal.py NAME[:ERRNO] hal ARGS...``: ``hal ARGS...`` whose host write of
the session file ``NAME`` (``agentfs.write_host_file``) fails with ENOSPC, as on a full disk
(or with ``ERRNO``, e.g. ``EROFS`` for a read-only home, ``EACCES`` for one hal may not write).

Test-only, like :mod:`tests.cli.killed_hal`: a patch made in this wrapper process."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    name, *args = sys.argv[1:]
    name, _, which = name.partition(":")
    code = getattr(errno, which or "ENOSPC")
    from hal9999 import agentfs

    real = agentfs.write_host_file

    def write(path: Any, *a: Any, **k: Any) -> Any:
        if Path(path).name == name:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *a, **k)

    agentfs.write_host_file = write  # type: ignore[assignment]
    sys.argv = ["hal", *args]
    from hal9999.cli.entry import main as hal

    hal()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
