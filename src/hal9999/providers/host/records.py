"""The host providers' records (``<state_dir>/<id>/sandbox.json``) and the spec check every
provider applies before making a sandbox (split from :mod:`.sandbox`, which keeps the
handle and the lifecycle)."""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
import os
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from hal9999.errors import CapabilityError, ConfigError
from hal9999.home import spread_once
from hal9999.providers.base import Capabilities
from hal9999.providers.host import cgroups
from hal9999.providers.host import fs as hostfs
from hal9999.providers.records import JsonRecords
from hal9999.providers.records import SandboxRecord as BaseRecord
from hal9999.spec import SandboxSpec


class SandboxRecord(BaseRecord):
    """What ``sandbox.json`` holds."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    cgroup: dict[str, Any] | None = None
    """The cgroup tracking its processes (:meth:`Cgroup.to_record`), if any."""
    uid: int | None = None
    """The host uid (and gid) its processes run as, when hal runs as root (see
    :mod:`.user`); None means they run as the user running hal."""


class RecordStore(JsonRecords[SandboxRecord]):
    """The sandbox directories under a provider's state dir (``<id>/sandbox.json``)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, SandboxRecord, layout="dir")
        self._kept: dict[str, tuple[tuple[int, int, int], SandboxRecord]] = {}
        """Per sandbox, the record :meth:`save_kept` wrote last and its file's stamp then."""
        self._cgroups: dict[str, tuple[dict[str, Any], cgroups.Cgroup]] = {}
        """Per sandbox, the cgroup object :meth:`cgroup` built, with the record's entry."""

    def save_kept(self, record: SandboxRecord) -> None:
        """:meth:`save`, and keep the record for :meth:`current` while its file is the one
        written here."""
        self.save(record)
        stamp = self.stamp(record.id)
        if stamp is None:  # gone meanwhile (a destroy): nothing to take later
            self._kept.pop(record.id, None)
        else:
            self._kept[record.id] = (stamp, record)

    def kept_stamp(self, sandbox_id: str) -> tuple[int, int, int] | None:
        """The stamp of the file :meth:`save_kept` last wrote for ``sandbox_id`` (None: none)."""
        kept = self._kept.get(sandbox_id)
        return None if kept is None else kept[0]

    def current(self, sandbox_id: str) -> SandboxRecord:
        """The record: the one :meth:`save_kept` wrote while its file is still that one (no
        save since, by any ``hal`` process: each save is a fresh file), else :meth:`load`
        (a read and a validation of the record a pool reset's start had saved)."""
        kept = self._kept.get(sandbox_id)
        if kept is not None and kept[0] == self.stamp(sandbox_id):
            return kept[1]
        return self.load(sandbox_id)

    def cgroup(self, record: SandboxRecord) -> cgroups.Cgroup | None:
        """The cgroup ``record`` names, if any: one object per sandbox while its records name
        the same one (not built four times a pool reset, a path per hierarchy each, nor
        its memory hierarchy looked up again by each handle's first command)."""
        if record.cgroup is None:
            return None
        known = self._cgroups.get(record.id)
        if known is not None and known[0] == record.cgroup:
            return known[1]
        cgroup = cgroups.Cgroup.from_record(record.cgroup)
        self._cgroups[record.id] = (record.cgroup, cgroup)
        return cgroup

    def forget(self, sandbox_id: str) -> None:
        """Drop what :meth:`save_kept` and :meth:`cgroup` keep of a destroyed sandbox."""
        self._kept.pop(sandbox_id, None)
        self._cgroups.pop(sandbox_id, None)

    def dir(self, sandbox_id: str) -> Path:
        """The directory of ``sandbox_id`` (which must look like an id: no path tricks)."""
        return self.root / self.check_id(sandbox_id)

    def stamp(self, sandbox_id: str) -> tuple[int, int, int] | None:
        """What changes whenever anyone saves the record of ``sandbox_id`` (each save is a
        fresh file); None when the file is gone."""
        try:
            st = os.stat(self.path(sandbox_id))
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns

    def make_dir(self, sandbox_id: str) -> Path:
        """Create the directory of a new sandbox (``FileExistsError`` when it exists); the
        first of this process's flags the state dir so that each lands in a block group of
        its own (its record is saved again at each stop and start: see
        :func:`hal9999.home.spread_subdirs`)."""
        directory = self.dir(sandbox_id)
        directory.mkdir(parents=True)
        spread_once(self.root)
        return directory


def check_spec(name: str, capabilities: Capabilities, spec: SandboxSpec) -> None:
    """Reject what ``capabilities`` cannot honour, naming the provider that can."""
    if isinstance(spec.network, tuple):
        if "allow-list" not in capabilities.network_modes:
            raise CapabilityError(
                f"provider {name!r} cannot restrict the network to an allow-list",
                hint='use network "host", or a VM provider that supports allow-lists',
            )
    elif spec.network not in capabilities.network_modes:
        raise CapabilityError(
            f"provider {name!r} cannot give network mode {spec.network!r}",
            hint=(
                f"{name!r} cannot cut the network off; to run on it with the host's network "
                f'set HAL_{name.upper()}_NETWORK=host (or network = "host" in [pool.{name}]), '
                "or pick a provider that isolates, such as bwrap"
            )
            if spec.network == "none"
            else f"choose one of: {', '.join(sorted(capabilities.network_modes))}",
        )
    wanted = cgroups.CgroupLimits.from_resources(spec.resources)
    if wanted.controllers() and not capabilities.resource_limits:
        raise CapabilityError(
            f"provider {name!r} cannot enforce resource limits",
            hint="use --provider bwrap for cpu, memory and pid limits",
        )
    for bind in spec.binds:
        if not bind.target.startswith("/") or hostfs.normalize(bind.target, "/") == "/":
            raise ConfigError(f"bind target {bind.target!r} must be an absolute path below /")
        if not bind.source.exists():
            raise ConfigError(f"bind source {bind.source} does not exist")
    if spec.workspace is not None and not spec.workspace.is_dir():
        raise ConfigError(f"workspace {spec.workspace} is not a directory")
