"""The ``kubernetes`` provider against the fake API server (tests/fakes/k8s_api.py): the
objects it makes, each injected fault, reconcile, and the warm pool under concurrent claims.
The contract suite runs it too (tests/providers/test_contract.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.k8s_api import FakeKube, Fault
from tests.support.kubernetes import make, spec

from hal9999.errors import (
    CloudAuthError,
    CloudNotFound,
    CloudServerError,
    ConfigError,
    ExecError,
    ProviderError,
    SpendCapReached,
)
from hal9999.providers.k8s import provider as k8s_provider
from hal9999.providers.k8s.api import is_conflict
from hal9999.providers.k8s.manifests import CLAIM, OWNER, SANDBOX
from hal9999.providers.k8s.provider import KubernetesProvider
from hal9999.spec import ArgvCommand, Resources

pytestmark = pytest.mark.bwrap


def ns_pods(fake: FakeKube, provider: KubernetesProvider) -> list[dict[str, Any]]:
    namespace = provider.config.namespace
    return [p.body for (n, _), p in fake.pods.items() if n == namespace]


# -- what it makes -------------------------------------------------------------------------


async def test_pod_and_policy_carry_limits_labels_runtime_class_and_deny_all(
    fake_k8s: FakeKube, hal_home: Path
) -> None:
    provider = make(hal_home, runtime_class="gvisor")
    assert provider.capabilities.isolation == "vm"
    resources = Resources(cpus=1.5, memory_mb=768)
    async with await provider.create(spec(resources=resources)) as sandbox:
        (pod,) = ns_pods(fake_k8s, provider)
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "hal9999"
        assert (labels[SANDBOX], labels[OWNER]) == (sandbox.id, provider.owner_id())
        pod_spec = pod["spec"]
        assert pod_spec["runtimeClassName"] == "gvisor"
        assert pod_spec["automountServiceAccountToken"] is False
        assert pod_spec["securityContext"]["runAsNonRoot"] is True
        (container,) = pod_spec["containers"]
        assert container["resources"]["limits"] == {"cpu": "1500m", "memory": "768Mi"}
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        policy = fake_k8s.policies[(provider.config.namespace, pod["metadata"]["name"])]
        assert policy["spec"]["podSelector"] == {"matchLabels": {SANDBOX: sandbox.id}}
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert policy["spec"]["egress"] == [] and policy["spec"]["ingress"] == []
    assert ns_pods(fake_k8s, provider) == []
    assert not [k for k in fake_k8s.policies if k[0] == provider.config.namespace]


async def test_host_network_allows_egress_only(fake_k8s: FakeKube, hal_home: Path) -> None:
    provider = make(hal_home)
    async with await provider.create(spec(network="host")) as sandbox:
        policy = fake_k8s.policies[(provider.config.namespace, f"hal-{sandbox.id}")]
        assert policy["spec"]["egress"] == [{}] and policy["spec"]["ingress"] == []


async def test_secrets_never_reach_the_exec_url(fake_k8s: FakeKube, hal_home: Path) -> None:
    provider = make(hal_home)
    async with await provider.create(spec()) as sandbox:
        result = await sandbox.exec(ArgvCommand(argv=("printenv", "TOKEN")),
                                    env={"TOKEN": "hunter2-secret"})  # fmt: skip
        assert result.stdout == b"hunter2-secret\n"
    urls = [url for method, url in fake_k8s.calls if method == "EXEC"]
    assert urls and not any("hunter2" in url for url in urls)


async def test_v4_servers_get_stdin_by_length(fake_k8s: FakeKube, hal_home: Path) -> None:
    provider = make(hal_home)
    fake_k8s.offer = ("v4.channel.k8s.io",)
    try:
        async with await provider.create(spec()) as sandbox:
            data = b"no close frame on v4\x00\xff"
            result = await sandbox.exec(ArgvCommand(argv=("cat",)), stdin=data, timeout=10)
            assert result.stdout == data
    finally:
        fake_k8s.offer = None
    assert fake_k8s.subprotocols[-1] == "v4.channel.k8s.io"


# -- settings --------------------------------------------------------------------------------


def test_bad_settings_are_one_clear_line(
    fake_k8s: FakeKube, hal_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HAL_K8S_CPU", "lots")
    with pytest.raises(ConfigError, match="cpu") as info:
        make(hal_home)
    assert "HAL_K8S_CPU" in (info.value.hint or "")
    monkeypatch.delenv("HAL_K8S_CPU")
    with pytest.raises(ConfigError, match="namespace"):
        make(hal_home, namespace="Not_A_Name")
    plugin = tmp_path / "plugin.yaml"
    plugin.write_text(
        "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://k.example'}}]\n"
        "users: [{name: u, user: {exec: {command: aws}}}]\n"
    )
    monkeypatch.setenv("HAL_K8S_KUBECONFIG", str(plugin))
    with pytest.raises(ConfigError, match="plugin"):
        make(hal_home).cluster()
    monkeypatch.setenv("HAL_K8S_KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no kubeconfig"):
        make(hal_home).cluster()


async def test_missing_image_is_a_config_error(
    fake_k8s: FakeKube, hal_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HAL_K8S_IMAGE")
    with pytest.raises(ConfigError, match="image"):
        await make(hal_home).create(spec())


# -- faults ------------------------------------------------------------------------------------


async def test_bad_token_is_an_auth_error_and_leaves_nothing(
    fake_k8s: FakeKube, hal_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAL_K8S_KUBECONFIG",
                       str(fake_k8s.kubeconfig(tmp_path / "bad", token="wrong")))  # fmt: skip
    provider = make(hal_home)
    with pytest.raises(CloudAuthError) as info:
        await provider.create(spec())
    assert info.value.code == "cloud_auth" and "401" in str(info.value)
    assert ns_pods(fake_k8s, provider) == []
    assert await provider.ledger.open_machines() == []


async def test_429_waits_retry_after_then_succeeds(fake_k8s: FakeKube, hal_home: Path) -> None:
    provider = make(hal_home)
    fake_k8s.faults.append(Fault(429, method="POST", path_prefix="/api/v1/", retry_after=1))
    started = time.monotonic()
    async with await provider.create(spec()) as sandbox:
        assert (await sandbox.exec(ArgvCommand(argv=("true",)))).ok
    assert time.monotonic() - started >= 1.0  # Retry-After honoured, not a fast retry
    pods_path = f"/api/v1/namespaces/{provider.config.namespace}/pods"
    assert len([c for c in fake_k8s.calls if c == ("POST", pods_path)]) == 2


async def test_5xx_on_reads_is_retried_with_backoff(fake_k8s: FakeKube, hal_home: Path) -> None:
    provider = make(hal_home)
    fake_k8s.faults.append(Fault(503, method="GET", path_prefix="/api/v1/", times=2))
    async with await provider.create(spec()) as sandbox:
        assert sandbox.id
    assert fake_k8s.faults[0].times == 0


async def test_5xx_on_create_is_not_resent_and_leaves_nothing(
    fake_k8s: FakeKube, hal_home: Path
) -> None:
    provider = make(hal_home)
    fake_k8s.faults.append(Fault(500, method="POST", path_prefix="/api/v1/", times=5))
    with pytest.raises(CloudServerError) as info:
        await provider.create(spec())
    assert info.value.code == "cloud_server"
    pods_path = f"/api/v1/namespaces/{provider.config.namespace}/pods"
    posts = [c for c in fake_k8s.calls if c == ("POST", pods_path)]
    assert len(posts) == 1  # a POST that may have acted is never sent twice
    assert ns_pods(fake_k8s, provider) == []
    assert await provider.ledger.open_machines() == []


async def test_slow_answers_time_out_clearly(fake_k8s: FakeKube, hal_home: Path) -> None:
    provider = make(hal_home, api_timeout_s=0.3, api_attempts=2)
    fake_k8s.faults.append(Fault(200, method="GET", path_prefix="/api/v1/", delay_s=1.5,
                                 times=2))  # fmt: skip
    with pytest.raises(CloudServerError, match="Timeout"):
        await provider.create(spec())
    await asyncio.sleep(1.5)  # the slow answers finish before the next test's
    assert ns_pods(fake_k8s, provider) == []


async def test_pod_stuck_pending_times_out_and_is_deleted(
    fake_k8s: FakeKube, hal_home: Path
) -> None:
    provider = make(hal_home, ready_timeout_s=0.4)
    fake_k8s.stuck_pending = True
    with pytest.raises(ProviderError, match=r"still Pending after 0\.4s; it was deleted") as info:
        await provider.create(spec())
    assert info.value.hint and "kubectl describe pod" in info.value.hint
    assert ns_pods(fake_k8s, provider) == []
    assert await provider.ledger.open_machines() == []


async def test_vanished_pod_is_a_clear_error_and_the_session_keeps_the_last_pull(
    fake_k8s: FakeKube, hal_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    provider = make(hal_home)
    sandbox = await provider.create(spec(workspace=workspace))
    await sandbox.exec(ArgvCommand(argv=("sh", "-c", "echo work > done.txt")))
    fake_k8s.vanish(provider.config.namespace, f"hal-{sandbox.id}")
    with pytest.raises(ExecError, match="is gone") as info:
        await sandbox.exec(ArgvCommand(argv=("true",)))
    assert info.value.hint
    assert (workspace / "done.txt").read_text() == "work\n"  # nothing lost
    monkeypatch.setattr(k8s_provider, "GRACE_S", 0.0)
    assert await provider.list() == []  # the record of a vanished pod is forgotten
    assert await provider.ledger.open_machines() == []


async def test_exec_refused_by_auth_maps_to_auth_error(fake_k8s: FakeKube, hal_home: Path) -> None:
    provider = make(hal_home)
    async with await provider.create(spec()) as sandbox:
        fake_k8s.faults.append(Fault(401, method="EXEC"))
        with pytest.raises(CloudAuthError, match="401"):
            await sandbox.exec(ArgvCommand(argv=("true",)))


# -- reconcile ---------------------------------------------------------------------------------


async def test_reconcile_deletes_labelled_orphans_and_only_ours(
    fake_k8s: FakeKube, hal_home: Path
) -> None:
    provider = make(hal_home)
    other = make(hal_home / "other")  # another hal installation: another owner id
    kept = await provider.create(spec())
    theirs = await other.create(spec())
    api = provider._api()
    try:
        # A crash after the pod was made and before the record: an old pod, no record.
        orphan = k8s_provider.manifests.pod(provider.config, "img", provider.owner_id(),
                                            "0123456789ab", spec())  # fmt: skip
        orphan["metadata"]["labels"][k8s_provider.TAKEN_AT] = "1000"
        await api.create_pod(orphan)
    finally:
        await api.aclose()
    assert await provider.reconcile() == ["0123456789ab"]
    names = {p["metadata"]["name"] for p in ns_pods(fake_k8s, provider)}
    assert names == {f"hal-{kept.id}", f"hal-{theirs.id}"}
    await provider.destroy(kept.id)
    await other.destroy(theirs.id)


# -- the warm pool -------------------------------------------------------------------------------


async def test_a_stale_claim_gets_409(fake_k8s: FakeKube, hal_home: Path) -> None:
    provider = make(hal_home)
    assert await provider.fill_warm(1) == 1
    api = provider._api()
    try:
        (pod,) = await api.list_pods({OWNER: provider.owner_id(), CLAIM: "free"})
        version = pod.metadata.resource_version
        await api.patch_labels(pod.metadata.name, {CLAIM: "taken"}, resource_version=version)
        with pytest.raises(Exception) as info:
            await api.patch_labels(pod.metadata.name, {CLAIM: "taken"}, resource_version=version)
        assert is_conflict(info.value)  # type: ignore[arg-type]
        await api.delete_pod(pod.metadata.name)
        with pytest.raises(CloudNotFound):
            await api.get_pod(pod.metadata.name)
    finally:
        await api.aclose()


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
async def test_50_concurrent_claims_never_share_a_pod_nor_pass_the_cap(
    fake_k8s: FakeKube, hal_home: Path, warm: bool
) -> None:
    cap = 4
    provider = make(hal_home, max_machines=cap)
    before = fake_k8s.pods_created
    if warm:
        assert await provider.fill_warm(cap) == cap
        assert await provider.fill_warm(cap) == 0  # already full
    results = await asyncio.gather(*(provider.create(spec()) for _ in range(50)),
                                   return_exceptions=True)  # fmt: skip
    made = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == min(50, cap)
    assert all(isinstance(f, SpendCapReached) for f in failed), failed[:3]
    pods = {sb.record.pod for sb in made}  # type: ignore[union-attr]
    assert len(pods) == len(made)  # never one pod to two sandboxes
    assert fake_k8s.pods_created - before == cap  # never more pods than the cap
    owners = {p["metadata"]["labels"][SANDBOX] for p in ns_pods(fake_k8s, provider)}
    assert owners == {sb.id for sb in made}  # type: ignore[union-attr]
    for sb in made:
        await provider.destroy(sb.id)  # type: ignore[union-attr]
    assert ns_pods(fake_k8s, provider) == []


async def test_a_stopped_relay_kills_its_command_and_brings_the_work_back(
    fake_k8s: FakeKube, hal_home: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    provider = make(hal_home)
    async with await provider.create(spec(workspace=workspace)) as sandbox:
        command = ArgvCommand(argv=("sh", "-c", "echo made > made.txt; exec sleep 60"))
        launch = sandbox.launch(command, env={"API_TOKEN": "relay-secret"})
        assert not any("relay-secret" in arg for arg in launch.argv)
        relay = await asyncio.create_subprocess_exec(
            *launch.argv, env=launch.env, stdin=asyncio.subprocess.DEVNULL
        )
        probe = ArgvCommand(argv=("sh", "-c", "test -e made.txt"))
        for _ in range(200):
            if (await sandbox.exec(probe)).ok:
                break
            await asyncio.sleep(0.05)
        relay.terminate()
        assert await asyncio.wait_for(relay.wait(), 30) == 143
        assert (workspace / "made.txt").read_text() == "made\n"  # pulled at the end
        listing = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null"
        seen = await sandbox.exec(ArgvCommand(argv=("sh", "-c", listing)))
        assert b"sleep 3600" in seen.stdout  # the listing works: the pod's own main process
        assert b"sleep 60 " not in seen.stdout  # the command went with its relay
