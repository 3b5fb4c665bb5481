"""Process managers, loaded from the ``hal9999.process_managers`` entry points."""

from __future__ import annotations

from pathlib import Path

from hal9999 import plugins
from hal9999.entrypoints import scanned_names
from hal9999.errors import ConfigError
from hal9999.process.base import ProcessManager

GROUP = plugins.PROCESS_MANAGERS.group


def available_process_managers() -> list[str]:
    """Names of the installed process managers."""
    return plugins.names(plugins.PROCESS_MANAGERS)


def load_process_manager(name: str, *, runtime_dir: Path | None = None) -> ProcessManager:
    """Instantiate the process manager registered as ``name``."""
    kind = plugins.PROCESS_MANAGERS
    if not plugins.installed(kind, name):  # the lookup is kept: no scan a task
        raise ConfigError(
            f"unknown process manager {name!r}",
            hint="choose one of: " + ", ".join(scanned_names(kind.group)),
        )
    manager: ProcessManager = plugins.build(kind, name, runtime_dir=runtime_dir)
    return manager
