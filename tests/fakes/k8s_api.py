"""An in-process fake of the Kubernetes API server's pods, exec and NetworkPolicies (the
paths, JSON shapes and status codes of the published API, core/v1 and networking.k8s.io/v1):

    POST   /api/v1/namespaces/{ns}/pods                  Pod -> 201 Pod (409 AlreadyExists)
    GET    /api/v1/namespaces/{ns}/pods?labelSelector=   PodList
    GET    /api/v1/namespaces/{ns}/pods/{name}           Pod | 404 Status NotFound
    PATCH  /api/v1/namespaces/{ns}/pods/{name}           merge patch (metadata.resourceVersion
                                                         is a precondition: 409 Conflict) or
                                                         JSON patch (``test`` ops; 422 Invalid)
    DELETE /api/v1/namespaces/{ns}/pods/{name}           200 Pod (its processes killed)
    GET    /api/v1/namespaces/{ns}/pods/{name}/exec      websocket, v5/v4.channel.k8s.io
    POST|GET /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies, DELETE .../{name}

Bearer auth (401 Status), or over TLS (tests/fakes/k8s_tls.py) a required client
certificate. Errors are metav1.Status objects. A pod is ``Pending`` until ``boot_s`` has
passed, then ``Running`` with its ``Ready`` condition ``True``; each pod is a bubblewrap
sandbox on this host and exec enters it (tests/fakes/k8s_exec.py). Faults:
any status for matching calls (``Retry-After`` with 429), slow answers, pods stuck
Pending, and :meth:`FakeKube.vanish` (a pod evicted under hal).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.k8s_exec import REASONS, FakePod, PodRuntime, status
from tests.fakes.k8s_tls import TlsFiles

TOKEN = "k8s-fake-test-token"
NS_PODS = "/api/v1/namespaces/{ns}/pods"


@dataclass
class Fault:
    """A status given instead of the real answer to matching calls (``delay_s``: slow)."""

    status: int
    method: str | None = None
    path_prefix: str = "/"
    times: int = 1
    retry_after: int | None = None
    delay_s: float = 0.0


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


class FakeKube(PodRuntime):
    """The fake API server on 127.0.0.1; use as a context manager."""

    def __init__(self, *, boot_s: float = 0.05, tls: TlsFiles | None = None,
                 client_certs: bool = False) -> None:  # fmt: skip
        self.boot_s = boot_s
        self.tls = tls
        """Serve HTTPS with these files (None: plain HTTP)."""
        self.client_certs = client_certs
        """With ``tls``: require a client certificate signed by its CA, which then
        authenticates every call (no bearer token), as an API server's x509 authenticator."""
        self.faults: list[Fault] = []
        self.pods: dict[tuple[str, str], FakePod] = {}
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.stuck_pending = False
        self.pods_created = 0
        self.calls: list[tuple[str, str]] = []
        self.answers: list[tuple[str, Any]] = []
        """(what, JSON body) of every answer, for schema checks."""
        self.subprotocols: list[str] = []
        """The exec subprotocol chosen for each stream."""
        self.offer: tuple[str, ...] | None = None
        self.canary: bytes | None = None
        """Bytes that must never reach a pod: counted in :attr:`canary_seen` when an exec's
        URL or stdin carries them."""
        self.canary_seen = 0
        """The exec subprotocols this server speaks (None: v5 and v4), e.g. an older one."""
        self._version = 1000
        self._tmp = Path(tempfile.mkdtemp(prefix="hal-fake-k8s-"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> FakeKube:
        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
        options: dict[str, Any] = {}
        if self.tls is not None:
            options = {"ssl_certfile": str(self.tls.server_cert),
                       "ssl_keyfile": str(self.tls.server_key)}  # fmt: skip
            if self.client_certs:
                options |= {"ssl_ca_certs": str(self.tls.ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(self._app(), log_level="error", lifespan="off",
                                ws="websockets-sansio", **options)  # fmt: skip
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            ready.set()
            try:
                loop.run_until_complete(self._server.serve(sockets=[sock]))
                loop.run_until_complete(self._kill_all())
            finally:
                loop.close()
                sock.close()

        self._thread = threading.Thread(target=serve, name="fake-k8s", daemon=True)
        self._thread.start()
        ready.wait()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the fake Kubernetes API server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(10)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def kubeconfig(self, path: Path, *, token: str | None = TOKEN, ca: Path | None = None,
                   client: tuple[Path, Path] | None = None) -> Path:  # fmt: skip
        """A kubeconfig file for this server (context ``fake``): ``token``, and with TLS the
        CA (``ca``, else this server's) and ``client`` (certificate, key) inline as data."""
        cluster: dict[str, Any] = {"server": self.url}
        user: dict[str, Any] = {"token": token} if token else {}
        if self.tls is not None:
            cluster["certificate-authority-data"] = _b64(ca or self.tls.ca)
        if client is not None:
            user |= {"client-certificate-data": _b64(client[0]),
                     "client-key-data": _b64(client[1])}  # fmt: skip
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "hal", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "hal"}}],
        }
        path.write_text(json.dumps(doc))  # JSON is YAML
        return path  # fmt: skip

    def _authorized(self, headers: Any) -> bool:
        # Behind a required client certificate the TLS handshake already authenticated.
        return self.client_certs or headers.get("authorization") == f"Bearer {TOKEN}"

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop from a test (blocking)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def vanish(self, namespace: str, name: str) -> None:
        """The pod goes as if evicted: processes killed, object gone."""
        pod = self.pods.pop((namespace, name), None)
        if pod is not None:
            self.call(self._kill(pod))

    def live_pods(self) -> list[str]:
        """Names of the pods that exist now."""
        return sorted(name for _, name in self.pods)

    # -- the app -----------------------------------------------------------------------
    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route, WebSocketRoute

        pods = "/api/v1/namespaces/{ns}/pods"
        policies = "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"
        return Starlette(routes=[
            Route(pods, self._guard(self._pods), methods=["GET", "POST"]),
            Route(pods + "/{name}", self._guard(self._pod), methods=["GET", "PATCH", "DELETE"]),
            WebSocketRoute(pods + "/{name}/exec", self._exec),
            Route(policies, self._guard(self._policies), methods=["GET", "POST"]),
            Route(policies + "/{name}", self._guard(self._policy), methods=["GET", "DELETE"]),
        ])  # fmt: skip

    def _answer(
        self, what: str, body: Any, code: int = 200, headers: dict[str, str] | None = None
    ) -> Any:
        from starlette.responses import JSONResponse

        self.answers.append((what, body))
        return JSONResponse(body, status_code=code, headers=headers)

    async def _fault(self, method: str, path: str) -> tuple[Fault | None, dict[str, Any] | None]:
        for fault in self.faults:
            if fault.times <= 0 or not path.startswith(fault.path_prefix):
                continue
            if fault.method is not None and fault.method != method:
                continue
            fault.times -= 1
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            if fault.status < 400:
                return None, None  # a slow answer, then the real one
            reason = REASONS.get(fault.status, "InternalError")
            return fault, status(fault.status, reason, f"injected {fault.status}")
        return None, None

    def _guard(self, handler: Any) -> Any:
        async def guarded(request: Any) -> Any:
            self.calls.append((request.method, request.url.path))
            if not self._authorized(request.headers):
                return self._answer("Status", status(401, "Unauthorized", "Unauthorized"), 401)
            fault, body = await self._fault(request.method, request.url.path)
            if fault is not None:
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else None
                return self._answer("Status", body, fault.status, headers)
            return await handler(request)

        return guarded

    def _bump(self) -> str:
        self._version += 1
        return str(self._version)

    def _view(self, pod: FakePod) -> dict[str, Any]:
        body = pod.body
        if (pod.init is not None and not pod.stuck and body["status"]["phase"] == "Pending"
                and time.monotonic() - pod.created >= self.boot_s):  # fmt: skip
            now = _now()
            body["status"] = {
                "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.244.0.7",
                "startTime": body["status"]["startTime"],
                "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                               for t in ("PodReadyToStartContainers", "Initialized", "Ready",
                                         "ContainersReady", "PodScheduled")],
                "containerStatuses": [{"name": c["name"], "image": c["image"],
                                       "imageID": "", "ready": True, "restartCount": 0,
                                       "started": True, "state": {"running": {"startedAt": now}}}
                                      for c in body["spec"]["containers"]],
            }  # fmt: skip
            body["metadata"]["resourceVersion"] = self._bump()
        return copy.deepcopy(body)

    # -- pods --------------------------------------------------------------------------
    async def _pods(self, request: Any) -> Any:
        ns = request.path_params["ns"]
        if request.method == "GET":
            selector = request.query_params.get("labelSelector", "")
            items = [self._view(p) for (n, _), p in sorted(self.pods.items()) if n == ns
                     and _matches(p.body["metadata"].get("labels", {}), selector)]  # fmt: skip
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
            body = {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }
            return self._answer("PodList", body)  # fmt: skip
        try:
            body = json.loads(await request.body())
            name = body["metadata"]["name"]
            assert body["spec"]["containers"][0]["image"]
        except (ValueError, KeyError, IndexError, TypeError, AssertionError):
            return self._answer("Status", status(422, "Invalid", "Pod is invalid"), 422)
        if (ns, name) in self.pods:
            msg = f'pods "{name}" already exists'
            return self._answer("Status", status(409, "AlreadyExists", msg, name=name,
                                                 kind="pods"), 409)  # fmt: skip
        body.setdefault("metadata", {}).update(
            namespace=ns,
            uid=str(uuid.uuid4()),
            resourceVersion=self._bump(),
            creationTimestamp=_now(),
        )
        body["spec"]["nodeName"] = "fake-node"
        body["status"] = {
            "phase": "Pending",
            "startTime": _now(),
            "qosClass": "Guaranteed",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
            ],
        }
        root = self._tmp / body["metadata"]["uid"]
        for sub in ("hal", "tmp"):
            (root / sub).mkdir(parents=True)
        pod = FakePod(body=body, root=root, stuck=self.stuck_pending)
        self.pods[(ns, name)] = pod
        self.pods_created += 1
        await self._boot(pod)
        return self._answer("Pod", copy.deepcopy(body), 201)  # fmt: skip

    async def _pod(self, request: Any) -> Any:
        ns, name = request.path_params["ns"], request.path_params["name"]
        pod = self.pods.get((ns, name))
        if pod is None:
            return self._answer("Status", status(404, "NotFound", f'pods "{name}" not found',
                                                 name=name, kind="pods"), 404)  # fmt: skip
        if request.method == "GET":
            return self._answer("Pod", self._view(pod))
        if request.method == "DELETE":
            del self.pods[(ns, name)]
            await self._kill(pod)
            body = self._view(pod)
            body["metadata"]["deletionTimestamp"] = _now()
            return self._answer("Pod", body)
        return await self._patch(request, pod, name)

    async def _patch(self, request: Any, pod: FakePod, name: str) -> Any:
        kind = request.headers.get("content-type", "").split(";")[0]
        try:
            patch = json.loads(await request.body())
        except ValueError:
            return self._answer("Status", status(400, "BadRequest", "invalid JSON"), 400)
        meta = pod.body["metadata"]
        conflict = status(409, "Conflict", f'Operation cannot be fulfilled on pods "{name}": '
                          "the object has been modified; please apply your changes to the "
                          "latest version and try again", name=name, kind="pods")  # fmt: skip
        if kind == "application/merge-patch+json":
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != meta["resourceVersion"]:
                return self._answer("Status", conflict, 409)
            for key, value in ((patch.get("metadata") or {}).get("labels") or {}).items():
                if value is None:
                    meta.get("labels", {}).pop(key, None)
                else:
                    meta.setdefault("labels", {})[key] = value
        elif kind == "application/json-patch+json":
            for op in patch:
                parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
                if parts[:1] != ["metadata"]:
                    return self._answer("Status", status(422, "Invalid", "only metadata"), 422)
                parent: Any = pod.body
                for part in parts[:-1]:
                    parent = parent.setdefault(part, {})
                if op["op"] == "test" and parent.get(parts[-1]) != op.get("value"):
                    return self._answer("Status", conflict, 409)
                if op["op"] in ("add", "replace"):
                    parent[parts[-1]] = op["value"]
                elif op["op"] == "remove":
                    parent.pop(parts[-1], None)
        else:
            return self._answer("Status", status(415, "UnsupportedMediaType",
                                                 f"the content type {kind!r} is not supported"),
                                415)  # fmt: skip
        meta["resourceVersion"] = self._bump()
        return self._answer("Pod", self._view(pod))

    # -- network policies --------------------------------------------------------------
    async def _policies(self, request: Any) -> Any:
        ns = request.path_params["ns"]
        if request.method == "GET":
            items = [copy.deepcopy(p) for (n, _), p in sorted(self.policies.items()) if n == ns]
            return self._answer(
                "NetworkPolicyList",
                {
                    "kind": "NetworkPolicyList",
                    "apiVersion": "networking.k8s.io/v1",
                    "metadata": {"resourceVersion": str(self._version)},
                    "items": items,
                },
            )
        body = json.loads(await request.body())
        name = body["metadata"]["name"]
        if (ns, name) in self.policies:
            msg = f'networkpolicies.networking.k8s.io "{name}" already exists'
            return self._answer("Status", status(409, "AlreadyExists", msg), 409)
        body["metadata"].update(
            namespace=ns,
            uid=str(uuid.uuid4()),
            resourceVersion=self._bump(),
            creationTimestamp=_now(),
        )
        self.policies[(ns, name)] = body
        return self._answer("NetworkPolicy", copy.deepcopy(body), 201)  # fmt: skip

    async def _policy(self, request: Any) -> Any:
        key = (request.path_params["ns"], request.path_params["name"])
        found = self.policies.get(key)
        if found is None:
            msg = f'networkpolicies.networking.k8s.io "{key[1]}" not found'
            return self._answer("Status", status(404, "NotFound", msg), 404)
        if request.method == "DELETE":
            del self.policies[key]
            return self._answer(
                "Status",
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": key[1]},
                },
            )
        return self._answer("NetworkPolicy", copy.deepcopy(found))
