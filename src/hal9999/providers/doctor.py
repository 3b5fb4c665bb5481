"""What ``hal doctor`` hands a provider's hook (:class:`DoctorScope`) and takes back
(:class:`Check`, one line of its report). The hook is
:class:`~hal9999.providers.base.ProviderDoctor`; these live apart from :mod:`.base` because
only ``hal doctor`` imports them, so a run defines none of these classes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hal9999.config import HalConfig
    from hal9999.errors import HalError


@dataclass
class Check:
    """One line of ``hal doctor``'s report: what was looked at, whether it is fine, the fix."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True
    """Whether a failure fails the report (otherwise it is a warning)."""


ToolCheck = Callable[[str, list[str], str, bool], Awaitable[Check]]
"""``hal doctor``'s check of a host tool, ``(name, argv printing its version, fix, required)``:
one way for every such line to read (installed?, its version, slow to answer)."""


@dataclass(frozen=True)
class DoctorScope:
    """What ``hal doctor`` hands a provider's
    :meth:`~hal9999.providers.base.ProviderDoctor.doctor`."""

    name: str
    """The provider's registered name."""
    config: HalConfig | HalError
    """The user's config, or the error loading it raised (the report says that already)."""
    state_dir: Path | None
    """The provider's state directory; None when the config or ``HAL_HOME`` is unusable (the
    report says that already, and what lives there cannot be looked at)."""
    tool: ToolCheck

    @property
    def settings(self) -> Mapping[str, Any] | None:
        """The provider's ``[providers.<name>]`` table; None when there is none."""
        providers = getattr(self.config, "providers", None)
        return None if providers is None else providers.get(self.name)
