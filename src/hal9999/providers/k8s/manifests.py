"""The objects hal creates in the cluster: one pod per sandbox and its NetworkPolicy.

The pod runs the configured image as a non-root user with every capability dropped, no
privilege escalation, a read-only root filesystem, no service-account token and no service
links; its writable places are two ``emptyDir`` volumes: ``/hal`` (the sandbox's mirror:
workspace, binds, home) and ``/tmp``. Its main process only waits; commands arrive through
the exec subresource. Labels find it again: ``app.kubernetes.io/managed-by=hal9999``,
``hal9999/owner`` (the state directory's owner id: reconcile touches only its own),
``hal9999/sandbox`` and, for the warm pool, ``hal9999/claim`` (``free`` or ``taken``).

The NetworkPolicy selects the one pod. Network ``none``: no ingress and no egress at all
(both policy types with empty rule lists): the LLM gateway is still reached, through the API
server's exec (:mod:`.sockmux`), not the pod network. Network ``host``: no ingress; egress anywhere
(the pod network, like the host's for a local sandbox). Allow-lists are not offered: a
NetworkPolicy names addresses, not host names. Policies are enforced only by a network
plugin that implements them (Calico, Cilium...): see docs/providers.md.
"""

from __future__ import annotations

from typing import Any

from hal9999.providers import limits
from hal9999.providers.k8s.config import KubernetesConfig
from hal9999.spec import SandboxSpec

MANAGED_BY = "app.kubernetes.io/managed-by"
OWNER, SANDBOX, CLAIM = "hal9999/owner", "hal9999/sandbox", "hal9999/claim"
ROOT = "/hal"
"""The mirror's volume inside the pod."""
CONTAINER = "sandbox"
IDLE = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
"""The pod's main process: waits, and ends at once when the pod is deleted."""


def pod_name(sandbox_id: str) -> str:
    """The pod of a sandbox."""
    return f"hal-{sandbox_id}"


def labels(owner: str, sandbox_id: str, *, claim: str = "taken") -> dict[str, str]:
    """The labels of a sandbox's pod."""
    return {MANAGED_BY: "hal9999", OWNER: owner, SANDBOX: sandbox_id, CLAIM: claim}


def _resources(config: KubernetesConfig, spec: SandboxSpec) -> dict[str, Any]:
    wanted = limits.explicit(spec.resources)
    cpu = f"{int(wanted.cpus * 1000)}m" if wanted.cpus else config.cpu
    memory = f"{wanted.memory_mb}Mi" if wanted.memory_mb else config.memory
    amounts = {"cpu": cpu, "memory": memory}
    return {"limits": amounts, "requests": dict(amounts)}


def pod(
    config: KubernetesConfig, image: str, owner: str, sandbox_id: str, spec: SandboxSpec,
    *, claim: str = "taken",
) -> dict[str, Any]:  # fmt: skip
    """The pod manifest of one sandbox."""
    disk_mb = limits.explicit(spec.resources).disk_mb
    hal_volume: dict[str, Any] = {"sizeLimit": f"{disk_mb}Mi"} if disk_mb else {}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(sandbox_id),
                     "labels": labels(owner, sandbox_id, claim=claim)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {
                "runAsNonRoot": True, "runAsUser": config.run_as_user,
                "runAsGroup": config.run_as_user, "fsGroup": config.run_as_user,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": CONTAINER, "image": image, "command": ["sh", "-c", IDLE],
                "workingDir": ROOT, "resources": _resources(config, spec),
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True},
                "volumeMounts": [{"name": "hal", "mountPath": ROOT},
                                 {"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "hal", "emptyDir": hal_volume},
                        {"name": "tmp", "emptyDir": {}}],
        },
    }  # fmt: skip
    if config.runtime_class:
        body["spec"]["runtimeClassName"] = config.runtime_class
    return body


def network_policy(owner: str, sandbox_id: str, network: str) -> dict[str, Any]:
    """The NetworkPolicy of a sandbox's pod (see the module docstring)."""
    body: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": pod_name(sandbox_id),
                     "labels": {MANAGED_BY: "hal9999", OWNER: owner, SANDBOX: sandbox_id}},
        "spec": {"podSelector": {"matchLabels": {SANDBOX: sandbox_id}},
                 "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []},
    }  # fmt: skip
    if network == "host":
        body["spec"]["egress"] = [{}]  # one empty rule: any destination
    return body
