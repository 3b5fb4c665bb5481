"""The Ray cluster address hal is given (``hal serve --ray``, ``[providers.ray] address``),
checked without importing Ray (the CLI stays lean)."""

from __future__ import annotations

import re

from hal9999.errors import UsageError

_ADDRESS = re.compile(r"(?:ray://)?[A-Za-z0-9.\-]+:[0-9]{1,5}|\[[0-9a-fA-F:]+\]:[0-9]{1,5}")


def check_address(address: str) -> str:
    """``address`` when it is a ``HOST:PORT`` of a Ray cluster's GCS; a one-line error else."""
    value = address.strip()
    if not _ADDRESS.fullmatch(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise UsageError(
            f"not a Ray cluster address: {address!r}",
            hint="give the head node's GCS as HOST:PORT, e.g. --ray 10.0.0.5:6379",
        )
    return value
