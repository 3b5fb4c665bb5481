"""Values for OpenSSH's client configuration (an ``ssh_config`` file, ``-o KEY=VALUE``, ``-i``),
written so that ssh reads back exactly the path hal means.

ssh splits each configuration line into words (a space ends a value; a ``"`` opens a quoted
one, and an unmatched one is "invalid quotes", a failed start), then expands its own ``%``
tokens in the paths (``%d`` is the home, ``%h`` the host...). A ``HAL_HOME`` or run
directory holding a space, a quote or a ``%`` named another file, or none."""

from __future__ import annotations

from pathlib import Path


def literal(text: str) -> str:
    """``text`` with each ``%`` doubled: what ssh's token expansion turns back into
    ``text`` (for ``ProxyCommand``, a shell line whose words are not ssh's to split).
    Never for ``-i``: ssh looks for that file before the expansion (pass ``-o
    IdentityFile=`` with :func:`config_value`)."""
    return text.replace("%", "%%")


def config_value(path: Path | str) -> str:
    """``path`` as one value of a configuration line: double-quoted, ``\\`` and ``"``
    escaped with a backslash (ssh's own quoting), ``%`` doubled."""
    text = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{literal(text)}"'
