"""What ``hal pool status`` and ``hal sandbox list`` show of a warm pool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hal9999.pool.settings import policy_of
from hal9999.spec import SandboxSpec

if TYPE_CHECKING:
    from hal9999.pool.pool import WarmPool


def status(pool: WarmPool) -> dict[str, Any]:
    """Counts per provider and per key, by state."""
    providers: dict[str, dict[str, Any]] = {}
    for entry in pool.entries:
        settings = pool.settings(entry.provider)
        row = providers.setdefault(
            entry.provider,
            {
                "max_size": settings.max_size,
                "min_warm": settings.min_warm,
                "policy": policy_of(entry.provider, settings),
                "states": {},
                "keys": {},
            },
        )
        if "hosts" not in row:
            # Providers that place sandboxes on hosts (ssh, lima) say where, and how full.
            placement = getattr(pool.providers(entry.provider), "placement", None)
            row["hosts"] = placement() if callable(placement) else []
        row["states"][entry.state] = row["states"].get(entry.state, 0) + 1
        key = row["keys"].setdefault(entry.key, {"spec": describe(entry.template)})
        key[entry.state] = key.get(entry.state, 0) + 1
    return {"paused": pool.paused, "providers": providers}


def sandboxes(pool: WarmPool) -> list[dict[str, Any]]:
    """Every sandbox the pool tracks."""
    return [
        {
            "id": e.id,
            "provider": e.provider,
            "key": e.key,
            "state": e.state,
            "task_id": e.task_id,
            "created_at": e.created_at,
            "last_used_at": e.last_used_at,
        }
        for e in pool.entries
    ]


def describe(spec: SandboxSpec) -> str:
    """A short human form of a pool key's spec."""
    res = spec.resources
    shown = {"mem": res.memory_mb, "cpus": res.cpus, "pids": res.pids, "disk": res.disk_mb}
    limits = ",".join(f"{name}={value}" for name, value in shown.items() if value is not None)
    parts = [spec.provider, f"net={spec.network}", spec.image or "", limits]
    return " ".join(p for p in parts if p)
