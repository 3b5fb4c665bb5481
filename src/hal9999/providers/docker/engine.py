"""Commands inside a container through the Docker Engine API (Docker, or Podman's service).

The ``docker`` SDK is synchronous: each exec runs in a worker thread that feeds its output to
the event loop through a queue, so nothing blocks the loop.

The engine API has no call that kills an exec'd command, so every command carries a random
token in its environment (``HAL_EXEC``) and a kill is a second exec that SIGKILLs every
process whose environment holds that token, until none is left. Children a command leaves
behind inherit the token and go with it; a process that rewrites its own environment can
outlive its command, but never its sandbox (stop and destroy end the whole container).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import threading
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hal9999.errors import ConfigError, ExecError, ProviderError, ProviderUnavailable
from hal9999.providers.base import STDOUT_LIMIT, StreamEvent
from hal9999.providers.handle import collect

TOKEN_VAR = "HAL_EXEC"
"""Environment variable carrying an exec's kill token."""
KILL_SCRIPT = r"""
tok="$1"
for _ in $(seq 50); do
  found=
  for d in /proc/[0-9]*; do
    if tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qxF "HAL_EXEC=$tok"; then
      kill -9 "${d#/proc/}" 2>/dev/null && found=1
    fi
  done
  [ -n "$found" ] || exit 0
  sleep 0.05
done
exit 1
"""
SETTLE_SCRIPT = r"""
me=$$ keep= first= n=0
for d in /proc/[0-9]*; do
  read -r s 2>/dev/null < "$d/stat" || continue
  s=${s##*) }; set -- $s
  if [ "$2" = 1 ] && { [ -z "$first" ] || [ "${20}" -lt "$first" ]; }; then
    first=${20} keep=${d#/proc/}
  fi
done
while [ "$n" -lt 100 ]; do
  n=$((n + 1)) found=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$p" in 1|"$me"|"$keep") continue ;; esac
    read -r s 2>/dev/null < "$d/stat" || continue
    s=${s##*) }; set -- $s
    [ "$1" = Z ] || [ "$2" = "$me" ] && continue
    kill -9 "$p" 2>/dev/null && found=1
  done
  [ -n "$found" ] || exit 0
  sleep 0.02 2>/dev/null
done
exit 1
"""
"""Ends every process in the container but its init, the init's first child (``sleep
infinity``: the oldest child of PID 1, which no later process can be) and its own, pass
after pass until a pass finds none alive; exit 1 when 100 passes did not settle it. A
process that cleared its environment or left its session goes too, unlike with
:data:`KILL_SCRIPT`. No fork but ``sleep`` between passes (a pids limit the agent filled
leaves none). Stat fields are read after the last ``)``: a command name may hold spaces
and parentheses."""
API_VERSION = "1.41"
ENV_WRAPPER = r"""
IFS= read -r n || exit 125
while IFS= read -r -d '' kv; do export "$kv" || exit 125; done < <(head -c "$n")
exec "$@"
"""
"""Runs inside before every command: exports the environment block that opens its stdin.

Exec-time variables (secrets among them) never go in the engine's exec record: Podman keeps
those in its state database on disk, and Docker shows them to ``docker inspect``. They
travel on the exec's stdin instead, as ``<length>\n`` and ``KEY=VALUE\0`` entries, read
with ``head -c`` (which never reads past its count) so the command's own stdin follows."""
INSTALL_HINT = "pip install 'hal9999[docker]' (the docker SDK)"


_CLIENTS: dict[str, Any] = {}
"""One client per engine address for the whole process: its connection pool is reused by
every provider instance and closed only at exit (a client per instance would leak sockets)."""


def docker_sdk() -> Any:
    """The docker SDK (``docker`` with its ``errors``, ``types`` and ``utils.socket``),
    imported on first use; without it (an install without the ``docker`` extra), a
    :class:`ProviderUnavailable` naming the extra, wherever the provider first needs it."""
    try:
        import docker
        import docker.errors
        import docker.types
        import docker.utils.socket
    except ImportError as exc:
        raise ProviderUnavailable(
            "the docker provider needs the docker SDK", hint=INSTALL_HINT
        ) from exc
    return docker


def engine_client(url: str, source: str = "the engine address") -> Any:
    """The ``docker.DockerClient`` for ``url``. An address the SDK cannot parse is a
    ConfigError naming ``source`` (what set it)."""
    docker = docker_sdk()
    if url not in _CLIENTS:
        # A fixed API version (which Docker and Podman 4+ serve) makes no call here; an engine
        # that does not answer is reported by the first real call, with the provider's hint.
        try:
            client = docker.DockerClient(base_url=url, version=API_VERSION, timeout=60)
        except docker.errors.DockerException as exc:
            raise ConfigError(
                f"{source}: {url!r} is not a Docker engine address ({exc})",
                hint=f"set {source} to unix:///PATH/docker.sock, tcp://HOST:PORT or ssh://HOST",
            ) from exc
        _CLIENTS[url] = client
    return _CLIENTS[url]


async def engine_call(url: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking SDK call to the engine at ``url`` in a thread, its errors mapped to
    hal's (``NotFound`` is left for the caller to judge)."""
    docker = docker_sdk()

    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except docker.errors.NotFound:
        raise
    except engine_errors() as exc:
        text = str(getattr(exc, "explanation", "") or exc)
        if "connection" in text.lower() or "no such file" in text.lower():
            raise ProviderUnavailable(
                f"no Docker API answers at {url}",
                hint="start Docker, or Podman's service (scripts/setup-podman.sh), and "
                "set HAL_DOCKER_URL or [providers.docker] url",
            ) from exc
        raise ProviderError(f"docker: {what} failed: {text}") from exc


def host_cli(cli: str | None, url: str) -> list[str]:
    """The host CLI (``cli``, else podman or docker, the first found) and its engine
    address ``url``, absolute (launch runs with a bare env)."""
    for name in [cli] if cli else ["podman", "docker"]:
        found = shutil.which(name)
        if found:
            flag = "--url" if Path(found).name == "podman" else "-H"
            remote = ["--remote"] if Path(found).name == "podman" else []
            return [found, *remote, flag, url]
    raise ProviderUnavailable(
        "no podman or docker CLI to launch commands with",
        hint="apt-get install podman (or docker.io), or set [providers.docker] cli",
    )


def env_block(env: Mapping[str, str]) -> bytes:
    """The environment block :data:`ENV_WRAPPER` reads (see there)."""
    body = b"".join(f"{key}={value}".encode() + b"\0" for key, value in env.items())
    return f"{len(body)}\n".encode() + body


def engine_errors() -> tuple[type[BaseException], ...]:
    """The exceptions the SDK raises for a failed API call or an unreachable engine."""
    import requests.exceptions

    docker = docker_sdk()

    return (docker.errors.DockerException, requests.exceptions.RequestException)


class ContainerExec:
    """Runs commands in one container as one user."""

    def __init__(self, client: Any, container: str, user: str) -> None:
        self.client = client
        self.container = container
        self.user = user

    async def stream(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        stdin: bytes | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Run ``argv``; yield its output as it comes and the exit status last. Leaving
        early (closed, cancelled) kills the command and everything it started."""
        token = secrets.token_hex(12)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()
        done = threading.Event()

        def put(item: StreamEvent | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> None:
            try:
                code = self._run(argv, env, cwd, stdin, put, token=token)
                put(StreamEvent("exit", exit_code=code))
            except BaseException as exc:  # handed to the loop, raised there
                put(exc)
            finally:
                done.set()

        worker = loop.run_in_executor(None, run)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.kind == "exit":
                    finished = True
                    return
        finally:
            if not finished:
                await asyncio.shield(self.kill(token))
            with contextlib.suppress(Exception):
                await asyncio.shield(worker)

    def _run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        stdin: bytes | None,
        put: Any,
        *,
        token: str = "",
    ) -> int:
        """One exec, blocking: create, attach, feed the environment and stdin, demultiplex
        output. Only the kill token and the sandbox id are in the engine's exec record."""
        frames_iter = docker_sdk().utils.socket.frames_iter

        api = self.client.api
        marks = {TOKEN_VAR: token} if token else {}
        if "HAL_SANDBOX" in env:
            marks["HAL_SANDBOX"] = env["HAL_SANDBOX"]
        stdin = env_block(env) + (stdin or b"")
        try:
            created = api.exec_create(
                self.container, ["bash", "-c", ENV_WRAPPER, "hal-env", *argv], stdin=True,
                stdout=True, stderr=True, environment=marks, workdir=cwd, user=self.user,
            )  # fmt: skip
            sock = api.exec_start(created["Id"], socket=True)
        except engine_errors() as exc:
            raise self._exec_failed(exc) from exc
        raw = getattr(sock, "_sock", sock)
        try:
            with contextlib.suppress(OSError):
                if stdin:
                    raw.sendall(stdin)
                raw.shutdown(socket.SHUT_WR)  # end of input: `cat` and friends finish
            for stream, data in frames_iter(sock, tty=False):
                if data:
                    put(StreamEvent("stderr" if stream == 2 else "stdout", bytes(data)))
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with contextlib.suppress(OSError):
                raw.close()
        try:
            code = api.exec_inspect(created["Id"]).get("ExitCode")
        except engine_errors() as exc:
            raise self._exec_failed(exc) from exc
        return 137 if code is None else int(code)

    def _exec_failed(self, exc: BaseException) -> ExecError:
        explanation = str(getattr(exc, "explanation", "") or exc)
        lowered = explanation.lower()
        if "not running" in lowered or "stopped" in lowered or "state" in lowered:
            return ExecError(
                f"sandbox {self.container} is stopped", hint="start it with its provider first"
            )
        return ExecError(f"exec in {self.container} failed: {explanation}")

    async def kill(self, token: str) -> None:
        """SIGKILL every process carrying ``token``, until none is left (or the container is
        gone, which ends them too)."""

        def run() -> None:
            with contextlib.suppress(*engine_errors()):
                chunks: list[StreamEvent] = []
                self._run(["sh", "-c", KILL_SCRIPT, "hal-kill", token], {}, "/", None,
                          chunks.append)  # fmt: skip

        await asyncio.to_thread(run)

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        stdin: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        stdout_limit: int = STDOUT_LIMIT,
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` to completion; on ``timeout`` kill it and raise :class:`ExecError`
        carrying what it wrote so far; past ``stdout_limit`` bytes of stdout, the same."""
        events = self.stream(argv, env=env, cwd=cwd, stdin=stdin)
        result = await collect(events, time_limit=timeout, what=f"command {argv[0]!r}",
                               no_status=137, stdout_limit=stdout_limit)  # fmt: skip
        return result.exit_code, result.stdout, result.stderr
