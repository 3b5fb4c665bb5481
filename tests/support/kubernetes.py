"""Building the Kubernetes provider against the fake API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hal9999.providers.k8s.provider import KubernetesProvider
from hal9999.providers.registry import load_provider
from hal9999.spec import SandboxSpec


def make(hal_home: Path, **settings: Any) -> KubernetesProvider:
    """The kubernetes provider against the fake API server, polling fast."""
    found = load_provider(
        "kubernetes",
        state_dir=hal_home / "sandboxes" / "kubernetes",
        settings={"poll_s": 0.02, "ready_timeout_s": 20} | settings,
    )
    assert isinstance(found, KubernetesProvider)
    return found  # fmt: skip


def spec(**fields: Any) -> SandboxSpec:
    """A kubernetes sandbox spec with no network, with ``fields`` over it."""
    return SandboxSpec(**({"provider": "kubernetes", "network": "none"} | fields))
