"""Sandbox records kept as JSON files under a provider's state dir: one store for every
provider that keeps its own (the host providers, ``ssh`` and those built on it).

A record is any pydantic model with an ``id`` (12 hex digits: never a path) and a
``created_at``; the layout says where its file lives: ``dir`` is ``<root>/<id>/sandbox.json``
(the sandbox's directory holds its other files too), ``file`` is ``<root>/<id>.json``. Any
later ``hal`` process (or a relay) reads the same records.
"""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from hal9999 import fs
from hal9999.errors import ProviderError, SandboxNotFound
from hal9999.hostread import read_all
from hal9999.providers.base import SandboxInfo, SandboxState
from hal9999.spec import SandboxSpec

RECORD = "sandbox.json"
"""The record's file name in the ``dir`` layout."""
PREVIOUS = ".previous.json"
"""Beside it: the record a stop replaced (see :meth:`JsonRecords.save`)."""
_ID = re.compile(r"[0-9a-f]{12}")


class SandboxRecord(BaseModel):
    """What every provider keeps about one sandbox; each adds where and how it runs."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """Sandbox id (12 hex digits)."""
    provider: str
    """Name of the owning provider."""
    state: SandboxState
    """Lifecycle state."""
    spec: SandboxSpec
    """The spec it was created from."""
    created_at: float
    """Creation time, seconds since the epoch."""

    def info(self) -> SandboxInfo:
        """The public view of this record."""
        return SandboxInfo(self.id, self.provider, self.state, self.spec, self.created_at)


R = TypeVar("R", bound=BaseModel)


class JsonRecords(Generic[R]):
    """Records of the model ``model`` under ``root``, in ``layout``."""

    def __init__(self, root: Path, model: type[R], *, layout: Literal["dir", "file"]) -> None:
        self.root = root
        self.model = model
        self.layout = layout
        self._owner: str | None = None

    def owner_id(self) -> str:
        """The random id of this state directory (its ``owner`` file, made once): a provider
        labels what it makes with it, and only reconciles what carries it."""
        if self._owner is None:
            path = self.root / "owner"
            self.root.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_hex(6))
            self._owner = path.read_text().strip()
        return self._owner

    @staticmethod
    def check_id(sandbox_id: str) -> str:
        """``sandbox_id`` when it looks like an id (so never a path), else SandboxNotFound."""
        if not _ID.fullmatch(sandbox_id):
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}: not a sandbox id")
        return sandbox_id

    def path(self, sandbox_id: str) -> Path:
        """The record file of ``sandbox_id``."""
        self.check_id(sandbox_id)
        if self.layout == "dir":
            return self.root / sandbox_id / RECORD
        return self.root / f"{sandbox_id}.json"

    def load(self, sandbox_id: str) -> R:
        """The record; :class:`SandboxNotFound` when gone."""
        path = self.path(sandbox_id)
        try:
            return self.model.model_validate_json(read_all(str(path)))
        except FileNotFoundError:
            raise SandboxNotFound(f"no sandbox {sandbox_id} under {self.root}") from None
        except ValidationError as exc:
            raise ProviderError(f"corrupt sandbox record {path}: {exc}") from exc

    def save(self, record: R, *, keep_previous: bool = False) -> None:
        """Write the record atomically (in the ``dir`` layout, into the sandbox's existing
        directory: a destroyed sandbox is never brought back by a late save).

        In the ``dir`` layout, ``keep_previous`` keeps the file it replaces as a second name,
        ``.previous.json``, and a save of exactly that file's bytes renames it back instead
        of writing a new file: a stop and the start after it (every pool reset) make one
        inode, not two (a new inode is dear on some hosts)."""
        path = self.path(_id_of(record))
        if self.layout == "file":
            self.root.mkdir(parents=True, exist_ok=True)
        # pydantic's own JSON (the values json.dumps of model_dump(mode="json") gave, in a
        # fraction of the time: every create, start, stop and reset saves).
        data = record.__pydantic_serializer__.to_json(record, indent=2)
        previous = path.with_name(PREVIOUS)
        if self.layout == "dir" and not keep_previous:
            with contextlib.suppress(OSError):  # none, or another process took it
                if read_all(str(previous)) == data:
                    fs.replace(previous, path)
                    return
        # Not fsynced: every create, start, stop and reset of a sandbox saves.
        with fs.atomic(path, mode=None, durable=False) as out:
            out.write(data)
            if self.layout == "dir" and keep_previous:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(previous)
                with contextlib.suppress(FileNotFoundError, FileExistsError):
                    os.link(path, previous)  # a second name: no new inode

    def delete(self, sandbox_id: str) -> None:
        """Forget the sandbox (its record file only)."""
        self.path(sandbox_id).unlink(missing_ok=True)

    def all(self) -> list[R]:
        """Every readable record, oldest first."""
        pattern = f"*/{RECORD}" if self.layout == "dir" else "*.json"
        found = []
        for path in self.root.glob(pattern):
            name = path.parent.name if self.layout == "dir" else path.stem
            with contextlib.suppress(ProviderError):
                found.append(self.load(name))
        return sorted(found, key=_created)


def _id_of(record: BaseModel) -> str:
    return str(record.id)  # type: ignore[attr-defined]


def _created(record: BaseModel) -> float:
    return float(record.created_at)  # type: ignore[attr-defined]
