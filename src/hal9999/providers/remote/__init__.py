"""What the providers whose sandboxes run elsewhere share (``ssh``, ``kubernetes``,
``ray``): file operations on a mirror of the session, the relays a process manager holds,
and a relay's stdin."""
