"""The fake Kubernetes API answers as the published OpenAPI v3 schema says, and what hal sends
(pod and NetworkPolicy manifests) is what that schema accepts.

The schema is a trimmed, hand-written subset of Kubernetes' (see its ``info`` in
tests/fakes/schemas/k8s_openapi_v3_trimmed.json): the components hal and the fake use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from tests.fakes.k8s_api import FakeKube, Fault

from hal9999.providers.k8s import manifests
from hal9999.providers.k8s.config import KubernetesConfig
from hal9999.providers.registry import load_provider
from hal9999.spec import ArgvCommand, Resources, SandboxSpec

pytestmark = pytest.mark.bwrap
DOC = json.loads((Path(__file__).parents[1] / "fakes" / "schemas" /
                  "k8s_openapi_v3_trimmed.json").read_text())  # fmt: skip
NAMES = {
    "Pod": "io.k8s.api.core.v1.Pod", "PodList": "io.k8s.api.core.v1.PodList",
    "Status": "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    "NetworkPolicy": "io.k8s.api.networking.v1.NetworkPolicy",
    "NetworkPolicyList": "io.k8s.api.networking.v1.NetworkPolicyList",
}  # fmt: skip


def validate(kind: str, body: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{NAMES[kind]}", "components": DOC["components"]}
    jsonschema.validate(body, schema, format_checker=jsonschema.FormatChecker())


async def test_answers_and_requests_follow_the_schema(
    fake_k8s: FakeKube, fake_k8s_settings: dict[str, Any], hal_home: Path, tmp_path: Path
) -> None:
    provider = load_provider("kubernetes", state_dir=hal_home / "sandboxes" / "kubernetes",
                             settings=fake_k8s_settings)  # fmt: skip
    fake_k8s.answers.clear()
    fake_k8s.faults.append(Fault(429, method="POST", path_prefix="/api/v1/", retry_after=0))
    async with await provider.create(SandboxSpec(provider="kubernetes", workspace=tmp_path)) as sb:
        await sb.exec(ArgvCommand(argv=("true",)))
        await provider.list()
        await provider.get(sb.id)
    kinds = {kind for kind, _ in fake_k8s.answers}
    assert {"Pod", "PodList", "Status", "NetworkPolicy"} <= kinds
    for kind, body in fake_k8s.answers:
        validate(kind, body)
    config = KubernetesConfig(runtime_class="kata", image="x")
    spec = SandboxSpec(provider="kubernetes", resources=Resources(cpus=1, memory_mb=512,
                                                                  disk_mb=1024))  # fmt: skip
    validate("Pod", manifests.pod(config, "img", "owner", "0123456789ab", spec))
    for network in ("none", "host"):
        validate("NetworkPolicy", manifests.network_policy("owner", "0123456789ab", network))


def test_a_wrong_answer_fails_the_check() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate("Pod", {"metadata": {"name": "p"}, "spec": {"containers": [{"image": "x"}]}})
    with pytest.raises(jsonschema.ValidationError):
        validate("Status", {"kind": "Status", "code": "409"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"HAL_K8S_IN_CLUSTER": "maybe"}, "HAL_K8S_IN_CLUSTER: expected 1 or 0 (true or false)"),
     ({"HAL_K8S_CPU": "abc"},
      "invalid kubernetes setting cpu: 'abc' is not a Kubernetes quantity (e.g. 500m")],
)  # fmt: skip
def test_a_bad_k8s_variable_is_one_line_in_hals_words(env: dict[str, str], expected: str) -> None:
    # HAL_K8S_IN_CLUSTER=maybe was read as no; a bad quantity said pydantic's "Value error,".
    from hal9999.errors import ConfigError
    from hal9999.providers.k8s.config import resolved

    with pytest.raises(ConfigError) as info:
        resolved(KubernetesConfig(), {"HOME": "/nonexistent", **env})
    assert info.value.message.startswith(expected), info.value.message


def test_hal_k8s_in_cluster_takes_yes_and_no_words() -> None:
    from hal9999.providers.k8s.config import resolved

    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert resolved(KubernetesConfig(), {"HAL_K8S_IN_CLUSTER": "on", **pod}).in_cluster
    off = resolved(KubernetesConfig(), {"HAL_K8S_IN_CLUSTER": "false", "HOME": "/h", **pod})
    assert not off.in_cluster and off.server is None and off.kubeconfig is not None
