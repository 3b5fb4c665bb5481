"""Kinds of events by who is shown them (no import: the thin ``hal run`` client reads it)."""

HAL_OWN = frozenset({"task_created", "phase", "sandbox_acquired", "task_end"})
"""Events hal records about the task itself; a foreground run's ``on_event`` gets only the
agent's (its output and what was parsed from it) and hal's notes (:data:`HAL_NOTES`), on
every path."""

HAL_NOTES = frozenset({"message", "upstream_wait"})
"""hal's own events a foreground run shows as they come (its warnings and errors, a model
call waiting on its upstream), in process and through ``hal serve``: each one line on
stderr (:mod:`hal9999.cli.runnotes`)."""
