"""The web dashboard ``hal serve`` mounts at ``/``: pages, login, live stream and terminal.

Imported by the daemon only (it pulls in Starlette); ``hal dashboard`` needs just
:mod:`hal9999.dashboard.auth` to print a login link. See docs/dashboard.md.
"""
