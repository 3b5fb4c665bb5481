"""The ``docker`` provider: sandboxes as containers through the Docker Engine API
(see :mod:`.provider`)."""
