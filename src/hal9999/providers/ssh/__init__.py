"""The ``ssh`` provider: sandboxes on hosts reached over SSH (asyncssh), one connection per
host, the session mirrored from the hal host (see :mod:`.provider`)."""
