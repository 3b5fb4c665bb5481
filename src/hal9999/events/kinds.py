"""Kinds of events, by who is shown them (light: the thin ``hal run`` client imports it)."""

HAL_NOTES = frozenset({"message", "upstream_wait"})
"""hal's own events a foreground run shows as they come (its warnings and errors, a model
call waiting on its upstream), in process and through ``hal serve``: each one line on
stderr (:mod:`hal9999.cli.runnotes`)."""
