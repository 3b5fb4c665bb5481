"""The hive: long-lived named agents with mailboxes, woken per turn.

``store`` (tables), ``broker`` (messages), ``agents`` (state dirs, lifecycle), ``turns``
(the turn loop and its stats), ``watch`` (crash watch), ``retention`` (``hal vacuum``).
Approvals, questions and reminders live beside them; the MCP server in ``hive.mcp``.
"""
