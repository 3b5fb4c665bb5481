"""The ``kubernetes`` provider: sandboxes in pods (see :mod:`.provider`)."""
