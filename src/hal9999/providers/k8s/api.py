"""The part of the Kubernetes API the ``kubernetes`` provider uses, over
:mod:`hal9999.providers.cloud.api`.

Core v1 pods (``/api/v1/namespaces/{ns}/pods``: create, get, list by ``labelSelector``,
JSON merge patch, delete) and networking.k8s.io/v1 NetworkPolicies, with the shared
client's retries (429 honouring ``Retry-After``, 5xx on idempotent calls) and its error
mapping (401/403 auth, 404 not found, 409 conflict as a :class:`CloudApiError` whose
``status`` is 409). Answers are validated by the models below (the fields hal reads).
"""

from __future__ import annotations

import builtins
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hal9999.errors import CloudApiError
from hal9999.providers.cloud.api import CloudApi, RateWindow, RetryPolicy
from hal9999.providers.k8s.config import Cluster

M = TypeVar("M", bound=BaseModel)
TLS_HINT = ("the API server's certificate is not signed by the CA hal trusts: check the "
            "cluster's certificate-authority(-data) in the kubeconfig")  # fmt: skip
MERGE_PATCH = "application/merge-patch+json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ObjectMeta(_Model):
    """metav1.ObjectMeta, the fields hal reads."""

    name: str
    """Object name."""
    namespace: str | None = None
    """Its namespace."""
    labels: dict[str, str] = {}
    """Labels (hal's owner, sandbox id, warm-pool claim)."""
    resource_version: str = Field(default="", alias="resourceVersion")
    """Optimistic-concurrency version: a patch carrying it fails with 409 once changed."""
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")
    """Set while the object is being deleted."""


class PodCondition(_Model):
    """One of a pod's conditions."""

    type: str
    """``Ready``, ``PodScheduled``, ``ContainersReady``, ``Initialized``..."""
    status: str
    """``True``, ``False`` or ``Unknown``."""
    reason: str | None = None
    """Why, in CamelCase."""


class PodStatus(_Model):
    """core/v1 PodStatus, the fields hal reads."""

    phase: str = "Pending"
    """``Pending``, ``Running``, ``Succeeded``, ``Failed`` or ``Unknown``."""
    conditions: list[PodCondition] = []
    """Its conditions."""
    reason: str | None = None
    """Why it is in this phase (e.g. ``Evicted``)."""
    message: str | None = None
    """A human-readable detail."""


class Pod(_Model):
    """core/v1 Pod."""

    metadata: ObjectMeta
    """Its metadata."""
    status: PodStatus = PodStatus()
    """Its status."""

    def ready(self) -> bool:
        """Running, and its Ready condition True."""
        return self.status.phase == "Running" and any(
            c.type == "Ready" and c.status == "True" for c in self.status.conditions
        )


class _PodList(_Model):
    items: list[Pod]


class KubeApi:
    """Pod and NetworkPolicy calls in one namespace; errors are :class:`CloudApiError`s."""

    def __init__(
        self, cluster: Cluster, namespace: str, *, policy: RetryPolicy, window: RateWindow
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.api = CloudApi(vendor="Kubernetes", base_url=cluster.server, token=cluster.token,
                            policy=policy, window=window, verify=cluster.tls,
                            tls_hint=TLS_HINT)  # fmt: skip

    async def aclose(self) -> None:
        """Close the client."""
        await self.api.aclose()

    def _pods(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    def _policies(self) -> str:
        return f"/apis/networking.k8s.io/v1/namespaces/{self.namespace}/networkpolicies"

    async def create_pod(self, manifest: dict[str, Any]) -> Pod:
        """Create a pod (it starts ``Pending``)."""
        answer = await self.api.request("POST", self._pods(), json=manifest)
        return _parse(Pod, answer.body, "create pod")

    async def get_pod(self, name: str) -> Pod:
        """One pod; :class:`CloudNotFound` when gone."""
        answer = await self.api.request("GET", f"{self._pods()}/{name}")
        return _parse(Pod, answer.body, "get pod")

    async def list_pods(self, selector: dict[str, str]) -> builtins.list[Pod]:
        """Pods carrying every label of ``selector``."""
        query = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        answer = await self.api.request("GET", self._pods(), params={"labelSelector": query})
        return _parse(_PodList, answer.body, "list pods").items

    async def patch_labels(
        self, name: str, labels: dict[str, str], *, resource_version: str | None = None
    ) -> Pod:
        """Merge ``labels`` into a pod's; with ``resource_version`` the patch applies only to
        that version of it (HTTP 409 otherwise: someone else changed it first)."""
        meta: dict[str, Any] = {"labels": labels}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        answer = await self.api.request(
            "PATCH", f"{self._pods()}/{name}", json={"metadata": meta}, content_type=MERGE_PATCH
        )
        return _parse(Pod, answer.body, "patch pod")  # fmt: skip

    async def delete_pod(self, name: str, *, grace_s: int = 0) -> None:
        """Delete a pod (its processes are killed after ``grace_s``)."""
        await self.api.request("DELETE", f"{self._pods()}/{name}",
                               params={"gracePeriodSeconds": grace_s})  # fmt: skip

    async def create_policy(self, manifest: dict[str, Any]) -> None:
        """Create a NetworkPolicy."""
        await self.api.request("POST", self._policies(), json=manifest)

    async def delete_policy(self, name: str) -> None:
        """Delete a NetworkPolicy."""
        await self.api.request("DELETE", f"{self._policies()}/{name}")


def is_conflict(exc: CloudApiError) -> bool:
    """Whether the API answered 409 Conflict (a changed resourceVersion, a taken name)."""
    return exc.details.get("status") == 409


def _parse(model: type[M], body: Any, what: str) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise CloudApiError(
            f"Kubernetes answered {what} with an unexpected body: {exc.error_count()} "
            f"problem(s), first: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}",
            hint="the API server may be too old or a proxy answered; report it",
        ) from exc
