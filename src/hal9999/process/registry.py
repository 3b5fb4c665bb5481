"""Process managers, loaded from the ``hal9999.process_managers`` entry points."""

from __future__ import annotations

from pathlib import Path

from hal9999.entrypoints import find_entry_point
from hal9999.errors import ConfigError
from hal9999.process.base import ProcessManager

GROUP = "hal9999.process_managers"


def available_process_managers() -> list[str]:
    """Names of the installed process managers."""
    from importlib.metadata import entry_points  # for a listing; a run needs none of it

    return sorted(ep.name for ep in entry_points(group=GROUP))


def load_process_manager(name: str, *, runtime_dir: Path | None = None) -> ProcessManager:
    """Instantiate the process manager registered as ``name``."""
    ep = find_entry_point(GROUP, name)  # kept (a scan at each run of each task was a tenth
    # of a daemon's CPU)
    if ep is not None:
        manager: ProcessManager = ep.load()(runtime_dir=runtime_dir)
        return manager
    raise ConfigError(
        f"unknown process manager {name!r}",
        hint="choose one of: " + ", ".join(available_process_managers()),
    )
