"""Commands in a pod over the exec subresource's websocket protocol.

``GET /api/v1/namespaces/{ns}/pods/{pod}/exec?command=...&stdin=...&stdout=1&stderr=1``
upgraded to a websocket with subprotocol ``v5.channel.k8s.io`` (else ``v4.channel.k8s.io``).
Every binary message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the final
status (a metav1.Status: ``Success``, or ``Failure`` whose ``details.causes`` hold the
``ExitCode``), 4 terminal resize. v5 adds 255: ``[255, 0]`` closes stdin. On v4 stdin cannot
be closed, so hal's commands never wait for its end (:mod:`.sandbox` sends a length first).

The argv travels in the URL, which API servers log: only hal's constant wrappers and
paths go there; values (environment, secrets) go over stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from typing import Any
from urllib.parse import urlencode

from hal9999.errors import (
    CloudAuthError,
    CloudNotFound,
    CloudServerError,
    ExecError,
)
from hal9999.providers.base import StreamEvent
from hal9999.providers.k8s.config import Cluster

V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
STDIN, STDOUT, STDERR, STATUS, CLOSE = 0, 1, 2, 3, 255
CHUNK = 256 << 10
"""Most stdin bytes per message."""


def exit_code(status: dict[str, Any]) -> int:
    """The exit status a channel-3 metav1.Status reports (255 when it names none)."""
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            with contextlib.suppress(TypeError, ValueError):
                return int(cause.get("message"))
    return 255


def _url(cluster: Cluster, namespace: str, pod: str, container: str,
         argv: Sequence[str], stdin: bool) -> str:  # fmt: skip
    query = [("container", container), ("stdout", "true"), ("stderr", "true"),
             ("stdin", "true" if stdin else "false"), ("tty", "false")]  # fmt: skip
    query += [("command", arg) for arg in argv]
    base = cluster.server.rstrip("/")
    base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{base}/api/v1/namespaces/{namespace}/pods/{pod}/exec?{urlencode(query)}"


async def stream(
    cluster: Cluster, namespace: str, pod: str, container: str, argv: Sequence[str],
    *, stdin: AsyncIterable[bytes] | None = None, open_timeout: float = 30.0,
) -> AsyncGenerator[StreamEvent, None]:  # fmt: skip
    """Run ``argv`` in the pod, yielding its output as it comes and its exit status last.
    ``stdin`` (None: no stdin) is sent as it is produced, then closed (v5)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException
    from websockets.typing import Subprotocol

    headers = {"Authorization": f"Bearer {cluster.token}"} if cluster.token else {}
    options: dict[str, Any] = {}
    if cluster.server.startswith("https://"):
        options["ssl"] = cluster.tls if cluster.tls is not False else _insecure()
    url = _url(cluster, namespace, pod, container, argv, stdin is not None)
    try:
        ws = await connect(
            url, subprotocols=[Subprotocol(V5), Subprotocol(V4)], additional_headers=headers,
            open_timeout=open_timeout, max_size=None, compression=None, ping_interval=20,
            **options,
        )  # fmt: skip
    except InvalidStatus as exc:
        raise _handshake_error(exc.response.status_code, pod) from exc
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        raise CloudServerError(
            f"cannot open an exec stream to pod {pod}: {exc}",
            hint="check the API server's address and the network",
        ) from exc
    sender: asyncio.Task[None] | None = None
    try:
        if stdin is not None:
            sender = asyncio.create_task(_send(ws, stdin, ws.subprotocol == V5))
        async for message in ws:
            if isinstance(message, str) or not message:
                continue
            channel, data = message[0], message[1:]
            if channel == STDOUT and data:
                yield StreamEvent("stdout", data)
            elif channel == STDERR and data:
                yield StreamEvent("stderr", data)
            elif channel == STATUS:
                try:
                    status = json.loads(data)
                except ValueError:
                    status = {}
                found = status if isinstance(status, dict) else {}
                yield StreamEvent("exit", exit_code=exit_code(found))
                return
        raise ExecError(f"the exec stream to pod {pod} ended without an exit status",
                        hint="the pod may have been deleted or its node lost")  # fmt: skip
    except WebSocketException as exc:
        raise ExecError(
            f"the exec stream to pod {pod} broke: {exc}",
            hint="the pod may have been deleted or its node lost",
        ) from exc
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        await ws.close()


async def _send(ws: Any, stdin: AsyncIterable[bytes], can_close: bool) -> None:
    from websockets.exceptions import ConnectionClosed

    with contextlib.suppress(ConnectionClosed):
        async for chunk in stdin:
            for start in range(0, len(chunk), CHUNK):
                await ws.send(bytes([STDIN]) + chunk[start : start + CHUNK])
        if can_close:
            await ws.send(bytes([CLOSE, STDIN]))


def _insecure() -> Any:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _handshake_error(status: int, pod: str) -> Exception:
    what = f"exec in pod {pod}: HTTP {status}"
    if status in (401, 403):
        return CloudAuthError(what, hint="check the cluster credentials (and RBAC: pods/exec)",
                              status=status)  # fmt: skip
    if status == 404:
        return CloudNotFound(what, hint="the pod is gone", status=status)
    return CloudServerError(what, hint="the API server failed; try again", status=status)
