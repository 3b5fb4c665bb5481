"""The client side of the daemon API, over its unix socket (what the CLI uses).

Light at import: the thin ``hal run`` client (:mod:`hal9999.cli.daemon_run`) finds the
daemon and calls it with :meth:`DaemonClient.request` (blocking, no asyncio), with neither
pydantic nor hal's models loaded; :class:`DaemonTaskAPI` imports those when it is used.
"""

from __future__ import annotations

import _socket  # the C module: socket.py builds four enums at import
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping

from hal9999 import plainjson
from hal9999.errors import HalError
from hal9999.server.runtime import DaemonInfo, find_running
from hal9999.tasks.through import see_through
from hal9999.workdir import pure_path

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why
if TYPE_CHECKING:
    import asyncio
    from pathlib import Path
    from typing import Any

    from hal9999.config import HalConfig
    from hal9999.events.models import Event
    from hal9999.store import TaskRecord
    from hal9999.tasks.api import OnEvent, OnOutput, OnStart, TaskAPI

RECONNECT_S = 60.0
"""How long a follower waits for a daemon that went away to come back."""
FOLLOW_WAIT_S = 10.0
"""How long one follow request waits for new events before the daemon answers."""
ANSWER_S = 30.0
"""How long a client waits for the daemon's answer (past a long poll's own wait) before it
says the daemon did not answer (``HAL_DAEMON_TIMEOUT_S`` sets it): a daemon stopped with
SIGSTOP, or stuck, held ``hal run`` and ``hal task stop`` silent for ever."""


STOPPING_S = 120.0
"""What a stop, cancel or removal may take in the daemon past :data:`ANSWER_S`: it waits for
the run's bring-back (``hal9999.process.base.STOP_WAIT_S``, not imported: this module is the
thin client's)."""
WORKING_S = 3600.0
"""The deadline of a request that does work of its own length (warming the pool, a command
in a sandbox, a hive agent's start or stop, an approval's merge)."""
_WORKING = ("/v1/pool/", "/v1/sandboxes/", "/v1/hive/agents", "/v1/hive/approvals/")
DEADLINE_HEADER = "Hal-Deadline"
"""The wall-clock time (seconds since the epoch) at which the client gives up on its request:
the daemon does not carry out one it reads later (a daemon stopped with SIGSTOP found the run
its client had said failed still in its socket, and ran it). Only the unix socket's clients
send it, so client and daemon read one host's clock."""


def answer_s() -> float:
    """:data:`ANSWER_S`, or ``HAL_DAEMON_TIMEOUT_S`` when set; one that is not a finite
    number of seconds above 0 is a :class:`~hal9999.errors.ConfigError` naming it."""
    import os

    value = os.environ.get("HAL_DAEMON_TIMEOUT_S", "")
    if not value:
        return ANSWER_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        from hal9999.errors import ConfigError

        raise ConfigError(
            "HAL_DAEMON_TIMEOUT_S: expected a number of seconds greater than 0",
            hint="fix or unset HAL_DAEMON_TIMEOUT_S",
        )
    return seconds


class DaemonUnavailable(HalError):
    """The daemon went away mid-request."""

    code = "daemon_unavailable"


def error_class(code: str) -> type[HalError]:
    """The :class:`HalError` subclass with this code (HalError itself when unknown)."""
    pending: list[type[HalError]] = [HalError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls
        pending.extend(cls.__subclasses__())
    return HalError


class DaemonClient:
    """Calls the daemon's API; errors come back as the :class:`HalError` they were."""

    timeout_s: float | None = None  # of each step of a blocking request, when set (hal status)

    token_file: str | None = None
    """Where the token came from (named when the daemon refuses it)."""

    def __init__(self, info: DaemonInfo, token: str) -> None:
        self.info = info
        self._token = token

    @classmethod
    def find(cls, home: Path | str) -> DaemonClient | None:
        """A client for the daemon of ``home``, when one is running."""
        found = find_running(str(home))
        if found is None:
            return None
        client = cls(*found)
        client.token_file = pure_path(str(home), "token")
        return client

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        """One request; returns the decoded JSON response. A daemon that does not answer
        within :meth:`deadline` is a :class:`DaemonUnavailable` saying what was asked."""
        import asyncio

        limit = self.deadline(method, path, query)
        try:
            async with asyncio.timeout(limit):
                try:
                    reader, writer = await asyncio.open_unix_connection(self.info.socket)
                except OSError as exc:
                    raise self._unreachable(exc) from exc
                try:
                    writer.write(self._request_bytes(method, path, body, query, limit))
                    await writer.drain()
                    status, payload = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
                    raise _closed(exc) from exc
                finally:
                    writer.close()
        except TimeoutError as exc:
            raise self.silent(method, path, limit) from exc
        return _payload(status, payload, self.token_file)

    def deadline(self, method: str, path: str, query: dict[str, Any] | None) -> float:
        """How long a request may wait for its answer: :attr:`timeout_s` (else
        :func:`answer_s`), past what the request itself waits for: a long poll's ``wait``, a
        stop's bring-back (:data:`STOPPING_S`), work of its own length (:data:`WORKING_S`)."""
        wait = query.get("wait") if query else None
        own = float(wait) if isinstance(wait, int | float) else 0.0
        task = path.startswith("/v1/tasks/")
        if task and (method == "DELETE" or path.endswith(("/stop", "/cancel"))):
            own = STOPPING_S
        elif method != "GET" and path.startswith(_WORKING):
            own = WORKING_S
        return (self.timeout_s or answer_s()) + own

    def silent(self, method: str, path: str, limit: float) -> DaemonUnavailable:
        """The error of a daemon that did not answer ``method path`` within ``limit``."""
        pid = self.info.pid
        later = "" if method == "GET" else " (hal serve drops it if it reads it after that)"
        return DaemonUnavailable(
            f"hal serve (pid {pid}) did not answer {method} {path.split('?')[0]} within "
            f"{limit:g} s{later}",
            hint=f"it may be stopped or stuck: `kill -CONT {pid}` resumes a stopped one; "
            "`hal serve --stop`, then `hal serve --detach`, restarts it (running agents keep "
            "running); HAL_DAEMON_TIMEOUT_S waits longer",
        )

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        """:meth:`call`, blocking (the thin ``hal run`` client, which runs no event loop)."""
        return self.send(method, path, body, query).answer()

    def send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Sent:
        """Send one request, blocking; its answer is read by :meth:`Sent.answer`, so the
        caller can do other work while the daemon handles it."""
        limit = self.deadline(method, path, query)
        try:
            conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        except OSError as exc:
            raise self._unreachable(exc) from exc
        conn.settimeout(limit)  # of each step: the connect, each send, each read
        try:
            try:
                conn.connect(str(self.info.socket))
            except TimeoutError as exc:  # a full backlog nobody takes from
                raise self.silent(method, path, limit) from exc
            except OSError as exc:
                raise self._unreachable(exc) from exc
            try:
                conn.sendall(self._request_bytes(method, path, body, query, limit))
            except TimeoutError as exc:  # a buffer nobody reads
                raise self.silent(method, path, limit) from exc
            except OSError as exc:
                raise _closed(exc) from exc
        except BaseException:
            conn.close()
            raise
        return Sent(conn, self.token_file, lambda: self.silent(method, path, limit))

    def _request_bytes(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        query: dict[str, Any] | None,
        limit: float,
    ) -> bytes:
        path = _path(path)  # the user's text (a task id as typed), escaped
        if query:
            path += "?" + _query({k: v for k, v in query.items() if v is not None})
        data = plainjson.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: hal\r\nAuthorization: Bearer {self._token}\r\n"
            f"{DEADLINE_HEADER}: {time.time() + limit:.3f}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + data

    def _unreachable(self, exc: OSError) -> DaemonUnavailable:
        return DaemonUnavailable(
            f"cannot reach the hal daemon at {self.info.socket}: {exc.strerror or exc}",
            hint="see `hal status`; restart it with `hal serve --detach`",
        )


class Sent:
    """A request sent by :meth:`DaemonClient.send`, its answer still to read."""

    def __init__(
        self,
        conn: _socket.socket,
        token_file: str | None = None,
        silent: Callable[[], DaemonUnavailable] | None = None,
    ) -> None:
        self._conn = conn
        self._token_file = token_file
        self._silent = silent

    def answer(self) -> Any:
        """The response's JSON, or the :class:`HalError` it carries."""
        with contextlib.closing(self._conn):
            try:
                status, payload = _receive(self._conn)
            except TimeoutError as exc:
                if self._silent is None:
                    raise _closed(exc) from exc
                raise self._silent() from exc
            except (OSError, ValueError) as exc:
                raise _closed(exc) from exc
        return _payload(status, payload, self._token_file)

    def close(self) -> None:
        """Leave the answer unread."""
        self._conn.close()


_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
"""What ``urllib.parse.quote_plus`` leaves as it is."""


def _path(path: str) -> str:
    """``urllib.parse.quote(path, safe="/")`` (a ``?`` or CR LF in a task id as typed is text,
    not syntax), without importing ``urllib.parse`` where nothing needs quoting."""
    if _PLAIN.issuperset(path.replace("/", "")):
        return path
    from urllib.parse import quote

    return quote(path, safe="/")


def _query(query: dict[str, Any]) -> str:
    """``urllib.parse.urlencode(query, doseq=True)``; without importing ``urllib.parse``
    (with its ``re`` and ``ipaddress``: the thin ``hal run``) where each name and
    value (a string or a number) needs no quoting."""
    pieces = []
    for key, value in query.items():
        text = str(value) if type(value) in (str, int, float) else "%"
        if _PLAIN.issuperset(key) and _PLAIN.issuperset(text):
            pieces.append(f"{key}={text}")
            continue
        from urllib.parse import urlencode

        piece = urlencode({key: value}, doseq=True)
        if piece:
            pieces.append(piece)
    return "&".join(pieces)


def _closed(exc: Exception) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"the hal daemon closed the connection: {exc}", hint="see `hal status`"
    )


def _payload(status: int, payload: Any, token_file: str | None = None) -> Any:
    """The response's JSON, or the :class:`HalError` it carries (a refused token as the
    file it came from, ``token_file``, and how to mend it)."""
    if status == 401 and token_file is not None:
        from hal9999.errors import HomeError

        raise HomeError(
            f"hal serve refused the token in {token_file} (changed since the daemon started)",
            hint="restart it to take the file's token: `hal serve --stop`, then "
            "`hal serve --detach` (running agents keep running)",
        )
    if status >= 400:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        cls = error_class(str(error.get("code", "hal_error")))
        raise cls(str(error.get("message", f"daemon error {status}")), hint=error.get("hint"))
    return payload


def _status(status_line: bytes) -> int:
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2:
        raise ValueError("no HTTP status line")
    return int(parts[1])


def _content_length(line: bytes, length: int) -> int:
    name, _, value = line.decode("latin-1").partition(":")
    return int(value.strip()) if name.strip().lower() == "content-length" else length


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, Any]:
    status = _status(await reader.readline())
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        length = _content_length(line, length)
    body = await reader.readexactly(length) if length else b""
    return status, plainjson.loads(body) if body else None


def _receive(conn: _socket.socket) -> tuple[int, Any]:
    """The response on ``conn``: its status and its JSON, read up to its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("the response ended before its headers did")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *headers = head.split(b"\r\n")
    status, length = _status(status_line), 0
    for line in headers:
        length = _content_length(line, length)
    while len(body) < length and (chunk := conn.recv(max(65536, length - len(body)))):
        body += chunk
    if len(body) < length:
        raise ValueError(f"the body ended after {len(body)} of {length} bytes")
    body = body[:length]
    return status, plainjson.loads(body) if body else None


def client_secrets(
    config: HalConfig, request: Mapping[str, Any], environ: Mapping[str, str]
) -> dict[str, str]:
    """Secret values the daemon needs from this shell for ``request`` (a wire request):
    ``--env`` and ``--secret`` names (which must be set), see :func:`shell_secrets`."""
    names = [*request.get("env_names", []), *request.get("secret_names", [])]
    return shell_secrets(config, request["agent"], request.get("env", {}), names, environ)


def shell_secrets(
    config: HalConfig,
    agent: str,
    given: Mapping[str, str],
    names: list[str],
    environ: Mapping[str, str],
) -> dict[str, str]:
    """The values a run of ``agent`` takes from this shell into the agent's environment, for
    a run (``hal run``) or a resume alike: ``given`` ones, ``names`` (which must be set),
    ``forward_env`` and the ``secrets`` names (when set). Sent over the private socket, held
    in the daemon's memory for the run, never stored. The agent's API key is not among them
    unless asked for by name: :func:`upstream_keys` sends it apart, for the gateway."""
    from hal9999.credentials import forwarded_env

    values = dict(given)
    values.update(forwarded_env([n for n in names if n not in values], environ))
    for name in [*config.forward_env, *config.secrets]:
        if name in environ and name not in values:
            values[name] = environ[name]
    return values


def upstream_keys(config: HalConfig, agent: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The API key of ``agent`` from this shell, by its variable's name (the config's
    ``api_key_env`` or the preset's own), when set: the daemon's environment need not hold
    it. Sent in a field of its own that only the gateway's route reads, so it never joins
    the agent's environment (an agent with no gateway route, going direct, is given it)."""
    from hal9999.agents.registry import resolve_agent
    from hal9999.gateway.tasks import upstream_key_env

    try:
        resolve_agent(agent, config.agent_settings(agent))
        key_env = upstream_key_env(config, agent)
    except HalError:
        return {}  # the daemon reports a bad agent itself
    return {key_env: environ[key_env]} if key_env and environ.get(key_env) else {}


def resume_secrets(
    config: HalConfig, task: TaskRecord, given: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """The values a resume of ``task`` sends the daemon: :func:`shell_secrets`, as ``hal
    run`` sends them, the task's variables (its ``--env`` and ``--secret`` names) required.
    The daemon keeps none from an earlier run, so one this shell lacks is refused here,
    naming it, before anything is sent."""
    from hal9999.tasks.secrets import TaskSecrets

    optional = set(config.forward_env)
    names = [n for n in task.env_keys if n not in optional]
    TaskSecrets(config, environ).require_resume_env(task, names, given, daemon=True)
    return shell_secrets(config, task.agent, given, names, environ)


def run_body(
    request: Mapping[str, Any], env: dict[str, str], keys: dict[str, str] | None = None
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/tasks``: the wire request, its secrets, the agent's API
    key apart (``upstream_keys``), the caller's settings as JSON and where they came from."""
    body = {**request, "env": env, "upstream_keys": keys or {}}
    config = request.get("config")
    if config is not None and not isinstance(config, dict):
        from hal9999.config_origin import origin_json  # loaded with the config that is sent

        body["config"] = config.model_dump(mode="json")
        body["config_origin"] = origin_json(config)
    return body


def _record(data: Any) -> TaskRecord:
    from hal9999.store.records import task_record

    return task_record(data)


class DaemonTaskAPI:
    """:class:`hal9999.tasks.api.TaskAPI` through a running ``hal serve``."""

    def __init__(self, client: DaemonClient, config: HalConfig, environ: Mapping[str, str]) -> None:
        self.client = client
        self.config = config
        self.environ = environ

    async def create(self, request: Mapping[str, Any]) -> TaskRecord:
        """Queue the task with the daemon (with this shell's secrets and settings)."""
        keys = upstream_keys(self.config, request["agent"], self.environ)
        body = run_body(request, client_secrets(self.config, request, self.environ), keys)
        if request.get("issue"):  # the issue is read, and its repository cloned, with them
            from hal9999.forges.settings import shell_tokens

            body["forge_tokens"] = shell_tokens(self.config, self.environ)
        return _record(await self.client.call("POST", "/v1/tasks", body))

    async def run(
        self,
        request: Mapping[str, Any],
        *,
        on_start: OnStart | None = None,
        on_output: OnOutput | None = None,
        on_event: OnEvent | None = None,
    ) -> TaskRecord:
        """Queue the task and follow it to its end (the daemon retries it)."""
        task = await self.create(request)
        if on_start is not None:
            on_start(task)
        return await see_through(self, task.id, on_output, on_event)

    async def get(self, task_id: str) -> TaskRecord:
        """One task."""
        return _record(await self.client.call("GET", f"/v1/tasks/{task_id}"))

    async def list(
        self, *, status: list[str] | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        """Tasks, newest first."""
        query = {"status": ",".join(status) if status else None, "limit": limit}
        return [_record(t) for t in await self.client.call("GET", "/v1/tasks", query=query)]

    async def stop(self, task_id: str) -> TaskRecord:
        """Stop a task."""
        return _record(await self.client.call("POST", f"/v1/tasks/{task_id}/stop"))

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task."""
        return _record(await self.client.call("POST", f"/v1/tasks/{task_id}/cancel"))

    async def resume(
        self,
        task_id: str,
        *,
        prompt: str | None = None,
        env: Mapping[str, str] | None = None,
        detach: bool = False,
        on_start: OnStart | None = None,
        on_output: OnOutput | None = None,
        on_event: OnEvent | None = None,
    ) -> TaskRecord:
        """Queue the task again with the daemon; follow it unless ``detach``. It is sent
        the values of the task's secrets from this shell, as ``hal run`` sends them
        (:func:`resume_secrets`), with ``env``. A ``prompt`` holding the value of one of
        them is refused here, before anything is sent."""
        task = await self.get(task_id)
        values = resume_secrets(self.config, task, env or {}, self.environ)
        if prompt is not None:
            import asyncio

            from hal9999.tasks.secrets import TaskSecrets

            here = TaskSecrets(self.config, self.environ)
            await asyncio.to_thread(here.check_resume_prompt, task, prompt, values)
        # The new run is shown from here: the task is resting, so following ends at the last
        # event its earlier runs recorded.
        seen = 0
        if not detach and (on_output is not None or on_event is not None):
            async for event in self.follow(task_id):
                seen = event.seq
        keys = upstream_keys(self.config, task.agent, self.environ)
        body = {"prompt": prompt, "env": values, "upstream_keys": keys}
        queued = _record(await self.client.call("POST", f"/v1/tasks/{task_id}/resume", body))
        if detach:
            return queued
        if on_start is not None:
            on_start(queued)
        return await see_through(self, queued.id, on_output, on_event, after_seq=seen)

    async def remove(self, task_id: str, *, force: bool = False) -> TaskRecord:
        """Delete a task and its session."""
        query = {"force": "1" if force else None}
        return _record(await self.client.call("DELETE", f"/v1/tasks/{task_id}", query=query))

    async def follow(self, task_id: str, *, after_seq: int = 0) -> AsyncIterator[Event]:
        """Long-polls the task's events until the daemon says it is over (retries done)."""
        import asyncio

        from hal9999.events.models import EVENT_ADAPTER

        gone_since: float | None = None
        while True:
            query = {"after_seq": after_seq, "wait": FOLLOW_WAIT_S}
            try:
                page = await self.client.call("GET", f"/v1/tasks/{task_id}/events", query=query)
            except DaemonUnavailable:
                # A restarting daemon (it adopts running agents): keep following a while.
                now = time.monotonic()
                gone_since = gone_since or now
                if now - gone_since > RECONNECT_S:
                    raise
                await asyncio.sleep(0.5)
                continue
            gone_since = None
            for data in page["events"]:
                event = EVENT_ADAPTER.validate_python(data)
                after_seq = max(after_seq, event.seq)
                yield event
            if page["done"]:
                return


if TYPE_CHECKING:

    def _keeps_the_protocol(api: DaemonTaskAPI) -> TaskAPI:
        return api  # mypy checks it: the client is a TaskAPI as the local and served ones are
