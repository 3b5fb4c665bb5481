"""The ``fake`` provider: real files, scripted commands, no processes (see :mod:`.provider`)."""
