"""The ``kubernetes`` provider: one pod per sandbox, commands over the exec websocket.

``create`` claims a warm pod (:meth:`KubernetesProvider.fill_warm` keeps some ready) or
makes one, under the spend cap (``max_machines`` pods at once, reserved in hal's store
before the API is asked, so no number of concurrent creates passes it), gives it its
NetworkPolicy, waits until it is Running and Ready (else deletes it and says so), and
pushes the session's directories in. A warm pod is claimed by a label patch that carries
the pod's ``resourceVersion``: the API server applies it to that version only, so of two
claimers one gets HTTP 409 and tries the next pod; no pod ever serves two sandboxes.
Pods carry the state directory's owner id, so reconcile deletes this hal's orphans (never
another's) and forgets records whose pod is gone. Pods cannot pause: ``stop`` kills every
process of the sandbox and brings its files back; ``start`` lets commands run again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import random
import secrets
import time
from pathlib import Path
from typing import Literal

from hal9999.errors import (
    CapabilityError,
    CloudApiError,
    CloudNotFound,
    ConfigError,
    HalError,
    ProviderError,
    SandboxNotFound,
)
from hal9999.providers.base import Capabilities, SandboxInfo
from hal9999.providers.cloud.api import RateWindow, RetryPolicy
from hal9999.providers.cloud.spend import SpendLedger
from hal9999.providers.host.exec import MARKER_VAR
from hal9999.providers.host.records import check_spec
from hal9999.providers.k8s import manifests
from hal9999.providers.k8s.api import KubeApi, Pod, is_conflict
from hal9999.providers.k8s.config import Cluster, KubernetesConfig, connect, resolved
from hal9999.providers.k8s.manifests import CLAIM, OWNER, SANDBOX, pod_name
from hal9999.providers.k8s.sandbox import KubeRecord, KubeRecords, KubeSandbox
from hal9999.providers.ssh.provider import mount_records
from hal9999.spec import SandboxSpec

logger = logging.getLogger(__name__)
GRACE_S = 5.0
"""A record this young may not show in the listing yet: reconcile leaves it be."""
TAKEN_AT = "hal9999/taken-at"
"""Label: when (epoch seconds) a pod was made for, or claimed by, a sandbox."""


class KubernetesProvider:
    """Sandboxes in Kubernetes pods, one pod per sandbox."""

    name = "kubernetes"
    config_model = KubernetesConfig
    capabilities = Capabilities(
        isolation="namespace", network_modes=frozenset({"none", "host"}), host_launch=True
    )

    def __init__(self, *, state_dir: Path, config: KubernetesConfig | None = None) -> None:
        self.config = resolved(config or KubernetesConfig())
        self.records = KubeRecords(state_dir)
        self.ledger = SpendLedger(self.name, state_dir, self.config)
        self._window = RateWindow()
        self._cluster: Cluster | None = None
        # A RuntimeClass such as gVisor or Kata puts a kernel of its own under the pod.
        isolation: Literal["vm", "namespace"] = "vm" if self.config.runtime_class else "namespace"
        self.capabilities = dataclasses.replace(self.capabilities, isolation=isolation)

    # -- plumbing ---------------------------------------------------------------------------
    def cluster(self) -> Cluster:
        """How to reach the API server (read once from the kubeconfig or the pod)."""
        if self._cluster is None:
            self._cluster = connect(self.config)
        return self._cluster

    def _api(self) -> KubeApi:
        policy = RetryPolicy(attempts=self.config.api_attempts, timeout_s=self.config.api_timeout_s)
        return KubeApi(self.cluster(), self.config.namespace, policy=policy, window=self._window)

    def owner_id(self) -> str:
        """This state directory's random owner id (made once): only pods carrying it are
        ever reconciled or claimed."""
        return self.records.owner_id()

    def _handle(self, record: KubeRecord) -> KubeSandbox:
        return KubeSandbox(record, self.records, self.cluster, self.destroy)

    def _create_window_s(self) -> float:
        return self.config.ready_timeout_s + self.config.api_attempts * self.config.api_timeout_s

    def _image(self, spec: SandboxSpec) -> str:
        image = spec.image or self.config.image
        if not image:
            raise ConfigError(
                "the kubernetes provider needs an image",
                hint="set HAL_K8S_IMAGE or image in [providers.kubernetes]",
            )
        return image  # fmt: skip

    # -- lifecycle --------------------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> KubeSandbox:
        """Claim a warm pod or make one, wait until it is ready, push the session in."""
        check_spec(self.name, dataclasses.replace(self.capabilities, resource_limits=True), spec)
        if spec.resources.pids:
            raise CapabilityError(
                "a pod cannot be given its own process limit",
                hint="leave pids unset (the node's pid limit applies)",
            )
        image = self._image(spec)
        api = self._api()
        try:
            pod = await self._claim_warm(api, spec)
            if pod is None:
                pod = await self._new_pod(api, image, spec, secrets.token_hex(6), claim="taken")
        finally:
            await api.aclose()
        sandbox_id = pod.metadata.labels[SANDBOX]
        record = KubeRecord(id=sandbox_id, provider=self.name, state="running", spec=spec,
                            created_at=time.time(), namespace=self.config.namespace,
                            pod=pod.metadata.name, mounts=mount_records(spec, manifests.ROOT),
                            settings=self.config)  # fmt: skip
        self.records.save(record)
        sandbox = self._handle(record)
        try:
            dirs = [m.remote for m in record.mounts]
            made = await sandbox.run_raw(["mkdir", "-p", "-m", "700", "--", *dirs])
            if not made.ok:
                raise ProviderError(
                    f"cannot make the sandbox's directories in {record.pod}: "
                    f"{made.stderr.decode('utf-8', 'replace')[-300:]}"
                )
            await sandbox.push()
        except BaseException:
            await asyncio.shield(self.destroy(sandbox_id))
            raise
        return sandbox  # fmt: skip

    async def _new_pod(
        self, api: KubeApi, image: str, spec: SandboxSpec, sandbox_id: str, *, claim: str
    ) -> Pod:
        """Reserve under the cap, create the pod and its policy, wait until ready; on any
        failure nothing is left behind (or, when the API may have acted, reconcile finds it)."""
        await self.ledger.reserve(sandbox_id)
        manifest = manifests.pod(self.config, image, self.owner_id(), sandbox_id, spec,
                                 claim=claim)  # fmt: skip
        manifest["metadata"]["labels"][TAKEN_AT] = str(int(time.time()))
        network = spec.network if isinstance(spec.network, str) else "none"
        try:
            await api.create_policy(manifests.network_policy(self.owner_id(), sandbox_id,
                                                             network))  # fmt: skip
            await api.create_pod(manifest)
            return await self._wait_ready(api, pod_name(sandbox_id))
        except BaseException:
            # A failed delete leaves the pod to reconcile (its spend record stays open).
            with contextlib.suppress(CloudApiError):
                await asyncio.shield(self._delete(api, sandbox_id))
            raise

    async def _wait_ready(self, api: KubeApi, name: str) -> Pod:
        deadline = time.monotonic() + self.config.ready_timeout_s
        while True:
            try:
                pod = await api.get_pod(name)
            except CloudNotFound:
                raise ProviderError(
                    f"pod {name} disappeared while it started",
                    hint="check the namespace's events; try again",
                ) from None
            if pod.ready():
                return pod
            if pod.status.phase in ("Failed", "Succeeded"):
                raise ProviderError(
                    f"pod {name} ended ({pod.status.phase}: "
                    f"{pod.status.reason or pod.status.message or 'no reason'})",
                    hint="check the image (kubectl describe pod)",
                )
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"pod {name} is still {pod.status.phase} after "
                    f"{self.config.ready_timeout_s:g}s; it was deleted",
                    hint="check the image and the cluster's capacity (kubectl describe pod), "
                    "or raise ready_timeout_s",
                )
            await asyncio.sleep(self.config.poll_s)  # fmt: skip

    async def _delete(self, api: KubeApi, sandbox_id: str) -> None:
        """Delete a sandbox's pod and policy and end its spend record. A refusal other than
        'not found' keeps the spend record (the pod may live; reconcile retries)."""
        with contextlib.suppress(CloudNotFound):
            await api.delete_pod(pod_name(sandbox_id))
        with contextlib.suppress(CloudNotFound):
            await api.delete_policy(pod_name(sandbox_id))
        await self.ledger.end(sandbox_id)

    # -- the warm pool ----------------------------------------------------------------------
    async def fill_warm(self, count: int) -> int:
        """Make ready, unclaimed pods until ``count`` wait, within the spend cap; returns how
        many were made (``hal pool warm N`` and the keeper's ``min_warm`` ask for them)."""
        wanted = count
        image = self._image(SandboxSpec(provider=self.name))
        api = self._api()
        try:
            free = await api.list_pods({OWNER: self.owner_id(), CLAIM: "free"})
            spec = SandboxSpec(provider=self.name, network="none")
            jobs = [self._new_pod(api, image, spec, secrets.token_hex(6), claim="free")
                    for _ in range(max(0, wanted - len(free)))]  # fmt: skip
            results = await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await api.aclose()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, HalError):
                raise result
        return sum(1 for result in results if isinstance(result, Pod))

    async def warm_count(self) -> int:
        """How many free warm pods wait in the cluster (``hal pool status``)."""
        api = self._api()
        try:
            free = await api.list_pods({OWNER: self.owner_id(), CLAIM: "free"})
        finally:
            await api.aclose()
        return sum(1 for pod in free if pod.metadata.deletion_timestamp is None)

    async def drain_warm(self) -> int:
        """Delete every free warm pod (each first taken by a versioned label patch, so a pod
        claimed meanwhile by a task is left alone); how many went."""
        api = self._api()
        drained = 0
        try:
            for pod in await api.list_pods({OWNER: self.owner_id(), CLAIM: "free"}):
                try:
                    await api.patch_labels(
                        pod.metadata.name,
                        {CLAIM: "draining"},
                        resource_version=pod.metadata.resource_version,
                    )
                except CloudApiError as exc:
                    if is_conflict(exc) or isinstance(exc, CloudNotFound):
                        continue
                    raise
                await self._delete(api, pod.metadata.labels[SANDBOX])
                drained += 1
        finally:
            await api.aclose()
        return drained

    async def _claim_warm(self, api: KubeApi, spec: SandboxSpec) -> Pod | None:
        """Take one ready free pod: a label patch valid only at the version read (409: it
        was taken first, try another). None when there is none."""
        free = [p for p in await api.list_pods({OWNER: self.owner_id(), CLAIM: "free"})
                if p.ready() and p.metadata.deletion_timestamp is None]  # fmt: skip
        random.shuffle(free)  # concurrent claimers spread over the pods instead of racing
        for pod in free:
            try:
                taken = await api.patch_labels(
                    pod.metadata.name, {CLAIM: "taken", TAKEN_AT: str(int(time.time()))},
                    resource_version=pod.metadata.resource_version,
                )  # fmt: skip
            except CloudApiError as exc:
                if is_conflict(exc) or isinstance(exc, CloudNotFound):
                    continue
                raise
            if spec.network == "host":
                sandbox_id = taken.metadata.labels[SANDBOX]
                with contextlib.suppress(CloudNotFound):
                    await api.delete_policy(pod_name(sandbox_id))
                await api.create_policy(manifests.network_policy(self.owner_id(), sandbox_id,
                                                                 "host"))  # fmt: skip
            return taken
        return None

    # -- the rest of the contract -----------------------------------------------------------
    async def get(self, sandbox_id: str) -> KubeSandbox:
        """A handle on an existing sandbox."""
        return self._handle(self.records.load(sandbox_id))

    async def list(self) -> builtins.list[SandboxInfo]:
        """The sandboxes, after reconciling records with the cluster's pods."""
        try:
            await self.reconcile()
        except (CloudApiError, ConfigError) as exc:
            logger.warning("cannot reconcile kubernetes pods: %s", exc.one_line())
        return [record.info() for record in self.records.all()]

    async def stop(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox in its pod, then bring its files back."""
        record = self.records.load(sandbox_id)
        self.records.save(record.model_copy(update={"state": "stopped"}))
        sandbox = self._handle(record)
        try:
            await sandbox.kill(MARKER_VAR, sandbox_id)
            await sandbox.pull()
        except HalError as exc:
            # Stopped all the same; the hal host keeps what the last pull brought.
            logger.warning("sandbox %s stopped, its files not brought back: %s", sandbox_id,
                           exc.one_line())  # fmt: skip

    async def start(self, sandbox_id: str) -> KubeSandbox:
        """Commands may run again (the pod kept its files); SandboxNotFound if it is gone."""
        record = self.records.load(sandbox_id)
        api = self._api()
        try:
            await api.get_pod(record.pod)
        except CloudNotFound:
            raise SandboxNotFound(f"the pod of sandbox {sandbox_id} is gone ({record.pod})",
                                  hint="hal sandbox rm it; the session kept its last pull"
                                  ) from None  # fmt: skip
        finally:
            await api.aclose()
        record = record.model_copy(update={"state": "running"})
        self.records.save(record)
        return self._handle(record)

    async def destroy(self, sandbox_id: str) -> None:
        """Delete the sandbox's pod and policy; never the session. Idempotent."""
        try:
            self.records.load(sandbox_id)
        except SandboxNotFound:
            return
        api = self._api()
        try:
            await self._delete(api, sandbox_id)
        except CloudApiError as exc:
            logger.warning("pod of sandbox %s not deleted (reconcile retries): %s", sandbox_id,
                           exc.one_line())  # fmt: skip
        finally:
            await api.aclose()
        with contextlib.suppress(SandboxNotFound):
            self.records.delete(sandbox_id)

    async def reconcile(self) -> builtins.list[str]:
        """Delete this hal's pods that no sandbox owns (a crash's), forget records whose pod
        is gone, end spend records of neither; return the sandbox ids acted on. Free warm
        pods and pods a create is still starting are left be."""
        api = self._api()
        now = time.time()
        try:
            pods = await api.list_pods({OWNER: self.owner_id()})
            live = {p.metadata.labels.get(SANDBOX, "") for p in pods} - {""}
            warm = {
                p.metadata.labels[SANDBOX]
                for p in pods
                if p.metadata.labels.get(CLAIM) == "free" and SANDBOX in p.metadata.labels
            }
            young = {
                p.metadata.labels.get(SANDBOX, "")
                for p in pods
                if now - _int(p.metadata.labels.get(TAKEN_AT)) < self._create_window_s()
            }
            return await self.ledger.reconcile(
                self.records,
                live=live,
                spared=warm | young,
                now=now,
                create_window_s=self._create_window_s(),
                grace_s=GRACE_S,
                machine="pod",
                delete=lambda sandbox_id: self._delete(api, sandbox_id),
            )
        finally:
            await api.aclose()


def _int(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0
