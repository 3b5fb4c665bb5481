"""Process managers, loaded from the ``hal9999.process_managers`` entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from hal9999.errors import ConfigError
from hal9999.process.base import ProcessManager

GROUP = "hal9999.process_managers"


def available_process_managers() -> list[str]:
    """Names of the installed process managers."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


_found: dict[str, EntryPoint] = {}


def _entry_point(name: str) -> EntryPoint | None:
    """The entry point registered as ``name``; kept, like the providers' (a scan of every
    installed package's metadata at each run of each task was a tenth of a daemon's CPU)."""
    if name not in _found:
        _found.clear()
        _found.update({ep.name: ep for ep in entry_points(group=GROUP)})
    return _found.get(name)


def load_process_manager(name: str, *, runtime_dir: Path | None = None) -> ProcessManager:
    """Instantiate the process manager registered as ``name``."""
    ep = _entry_point(name)
    if ep is not None:
        manager: ProcessManager = ep.load()(runtime_dir=runtime_dir)
        return manager
    raise ConfigError(
        f"unknown process manager {name!r}",
        hint="choose one of: " + ", ".join(available_process_managers()),
    )
