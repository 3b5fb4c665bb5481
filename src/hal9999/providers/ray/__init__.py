"""The ``ray`` provider: sandboxes on the nodes of a Ray cluster (see :mod:`.provider`)."""
