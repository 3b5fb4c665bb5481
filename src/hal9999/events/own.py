"""Which event types hal records about a task itself (no import: the light client uses it)."""

HAL_OWN = frozenset({"task_created", "phase", "sandbox_acquired", "message", "task_end"})
"""Events hal records about the task itself; a foreground run's ``on_event`` gets only the
agent's (its output and what was parsed from it), on every path."""
