"""Settings of the ``kubernetes`` provider and how hal reaches the cluster.

Settings come from ``[providers.kubernetes]``, each unset one from its ``HAL_K8S_*``
variable (:data:`ENV`). The cluster is reached as ``kubectl`` would: the in-cluster service
account (``in_cluster``), or a kubeconfig (``kubeconfig``, else ``$KUBECONFIG``'s first file,
else ``~/.kube/config``) at ``context`` (else its current context), authenticated by a
bearer token (``token``/``tokenFile``) or a client certificate. Exec credential plugins and
auth-provider entries are not run: hal says so and names the fix (a token).
"""

from __future__ import annotations

import base64
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from hal9999.errors import ConfigError, ProviderUnavailable
from hal9999.providers.cloud.spend import SpendCap
from hal9999.values import describe

ENV = {
    "namespace": "HAL_K8S_NAMESPACE", "image": "HAL_K8S_IMAGE",
    "kubeconfig": "HAL_K8S_KUBECONFIG", "context": "HAL_K8S_CONTEXT",
    "in_cluster": "HAL_K8S_IN_CLUSTER", "runtime_class": "HAL_K8S_RUNTIME_CLASS",
    "cpu": "HAL_K8S_CPU", "memory": "HAL_K8S_MEMORY", "server": "HAL_K8S_SERVER",
}  # fmt: skip
"""Setting -> the environment variable read when the config leaves it unset."""
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class KubernetesConfig(SpendCap):
    """Settings of the ``kubernetes`` provider (``[providers.kubernetes]``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["kubernetes"] = "kubernetes"
    """Provider kind."""
    namespace: str = "default"
    """Namespace of the sandbox pods and their NetworkPolicies (``HAL_K8S_NAMESPACE``)."""
    image: str | None = None
    """Container image of every sandbox pod (``HAL_K8S_IMAGE``): sh, coreutils, tar, grep."""
    kubeconfig: Path | None = None
    """Kubeconfig file (``HAL_K8S_KUBECONFIG``, else ``$KUBECONFIG``, else ``~/.kube/config``)."""
    context: str | None = None
    """Kubeconfig context (``HAL_K8S_CONTEXT``; unset: its current context)."""
    in_cluster: bool = False
    """Use the pod's own service account (``HAL_K8S_IN_CLUSTER=1``) instead of a kubeconfig."""
    server: str | None = None
    """The API server's URL, overriding the kubeconfig's (``HAL_K8S_SERVER``)."""
    runtime_class: str | None = None
    """RuntimeClass of the pods, e.g. ``gvisor`` or ``kata`` (``HAL_K8S_RUNTIME_CLASS``)."""
    cpu: str = "2"
    """CPU limit when the spec sets none (a Kubernetes quantity, ``HAL_K8S_CPU``)."""
    memory: str = "4Gi"
    """Memory limit when the spec sets none (a quantity, ``HAL_K8S_MEMORY``)."""
    run_as_user: int = Field(default=1000, ge=1)
    """The uid commands run as inside the pod (never root)."""
    ready_timeout_s: float = Field(default=300.0, gt=0)
    """How long a pod may take to be Running and Ready before it is deleted."""
    poll_s: float = Field(default=1.0, gt=0)
    """How often a starting pod's status is read."""
    api_timeout_s: float = Field(default=30.0, gt=0)
    """Per-call API timeout."""
    api_attempts: int = Field(default=5, ge=1)
    """Tries per API call (429 and 5xx are retried with backoff, Retry-After honoured)."""

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"{value!r} is not a namespace name (lower-case DNS label)")
        return value


def _flag(var: str, value: str) -> bool:
    """A yes/no variable (1/0, true/false, yes/no, on/off); another value, "maybe" say, is a
    ConfigError naming ``var`` (it was read as no)."""
    try:
        return TypeAdapter(bool).validate_python(value)
    except ValidationError as exc:
        raise ConfigError(
            f"{var}: expected 1 or 0 (true or false), got {value!r}", hint=f"fix or unset {var}"
        ) from exc


def resolved(config: KubernetesConfig, environ: dict[str, str] | None = None) -> KubernetesConfig:
    """``config`` with every unset setting taken from its ``HAL_K8S_*`` variable; a bad
    value is one :class:`ConfigError` line naming the variable."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = config.model_dump(exclude_unset=True)
    for name, var in ENV.items():
        value = env.get(var, "").strip()
        if name not in data and value:
            data[name] = _flag(var, value) if name == "in_cluster" else value
    # Pinned now: a relay runs with the sandbox's HOME, not the user's.
    if not data.get("in_cluster") and not data.get("kubeconfig"):
        data["kubeconfig"] = str(_default_kubeconfig(env))
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if data.get("in_cluster") and not data.get("server") and host and port:
        data["server"] = f"https://{host}:{port}"
    try:
        return KubernetesConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "settings"
        source = ENV.get(name, "")
        where = f"{source} or " if source and name not in config.model_fields_set else ""
        raise ConfigError(
            f"invalid kubernetes setting {name}: {describe(err)}",
            hint=f"fix {where}{name} in [providers.kubernetes]",
        ) from exc


@dataclass(frozen=True)
class Cluster:
    """How to reach one API server: its URL, TLS (a context, or False to skip checks), and
    a bearer token (None: the client certificate in ``tls`` authenticates)."""

    server: str
    tls: ssl.SSLContext | bool
    token: str | None


def connect(config: KubernetesConfig, environ: dict[str, str] | None = None) -> Cluster:
    """The cluster ``config`` names (in-cluster or a kubeconfig); :class:`ConfigError` when
    it cannot be used, with the fix."""
    env = os.environ if environ is None else environ
    if config.in_cluster:
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        token_file = SERVICE_ACCOUNT / "token"
        # A relay's environment has no KUBERNETES_SERVICE_*: ``server`` was pinned for it.
        if not (config.server or (host and port)) or not token_file.is_file():
            raise ConfigError("in_cluster is set but this is not a pod with a service account",
                              hint="unset HAL_K8S_IN_CLUSTER and give a kubeconfig")  # fmt: skip
        tls = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        server = config.server or f"https://{host}:{port}"
        return Cluster(server, tls, token_file.read_text().strip())
    path = config.kubeconfig or _default_kubeconfig(env)
    return _from_kubeconfig(path, config.context, config.server)


def _default_kubeconfig(env: dict[str, str] | os._Environ[str]) -> Path:
    listed = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p.strip()]
    return Path(listed[0]).expanduser() if listed else Path.home() / ".kube" / "config"


def _pick(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            found = item.get(what)
            return found if isinstance(found, dict) else {}
    raise ConfigError(f"kubeconfig {path} has no {what} named {name!r}",
                      hint="check HAL_K8S_CONTEXT and the file")  # fmt: skip


def _from_kubeconfig(path: Path, context: str | None, server: str | None) -> Cluster:
    try:
        import yaml
    except ImportError as exc:
        raise ProviderUnavailable(
            "reading a kubeconfig needs PyYAML", hint="pip install 'hal9999[kubernetes]'"
        ) from exc

    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no kubeconfig at {path}",
                          hint="set HAL_K8S_KUBECONFIG (or KUBECONFIG), or HAL_K8S_IN_CLUSTER=1"
                          ) from None  # fmt: skip
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {exc}".splitlines()[0],
                          hint="check the file (kubectl config view)") from exc  # fmt: skip
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} is not a kubeconfig", hint="check the file")
    name = context or doc.get("current-context")
    if not name:
        raise ConfigError(f"kubeconfig {path} has no current context",
                          hint="set HAL_K8S_CONTEXT")  # fmt: skip
    ctx = _pick(doc.get("contexts"), name, "context", path)
    cluster = _pick(doc.get("clusters"), str(ctx.get("cluster")), "cluster", path)
    user = _pick(doc.get("users"), str(ctx.get("user")), "user", path) if ctx.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise ConfigError(
            f"kubeconfig user {ctx.get('user')!r} authenticates through a plugin, which hal "
            "does not run",
            hint="give hal a token: kubectl create token SERVICEACCOUNT, in a kubeconfig user",
        )
    url = server or cluster.get("server")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ConfigError(f"kubeconfig {path}: cluster has no server URL", hint="check the file")
    return Cluster(url, _tls(cluster, user, path.parent), _token(user, path.parent))


def _material(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(str(entry[f"{key}-data"]))
    if entry.get(key):
        file = Path(str(entry[key])).expanduser()
        return (file if file.is_absolute() else base / file).read_bytes()
    return None


def _tls(cluster: dict[str, Any], user: dict[str, Any], base: Path) -> ssl.SSLContext | bool:
    if cluster.get("insecure-skip-tls-verify"):
        return False
    ca = _material(cluster, "certificate-authority", base)
    try:
        context = ssl.create_default_context(cadata=ca.decode("ascii") if ca else None)
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"kubeconfig {base}: the cluster's certificate-authority is not a "
                          f"PEM certificate ({exc})", hint="check the file (kubectl config "
                          "view --raw)") from exc  # fmt: skip
    cert = _material(user, "client-certificate", base)
    key = _material(user, "client-key", base)
    if cert and key:
        # ssl loads a chain from files only: a private directory that lives for the call.
        with tempfile.TemporaryDirectory(prefix="hal-k8s-") as tmp:
            cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            for file, data in ((cert_file, cert), (key_file, key)):
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
            try:
                context.load_cert_chain(cert_file, key_file)
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"kubeconfig {base}: the user's client-certificate and "
                    f"client-key do not load ({exc})",
                    hint="check the file (kubectl config view --raw)",
                ) from exc
    return context


def _token(user: dict[str, Any], base: Path) -> str | None:
    if user.get("token"):
        return str(user["token"])
    if user.get("tokenFile"):
        file = Path(str(user["tokenFile"])).expanduser()
        return (file if file.is_absolute() else base / file).read_text().strip()
    return None
