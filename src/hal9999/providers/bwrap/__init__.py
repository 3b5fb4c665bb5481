"""The ``bwrap`` provider: sandboxes in Linux namespaces via bubblewrap (see :mod:`.provider`)."""
