"""What a task's run needs from the gateway: its route (token, port, bind, agent settings) and
the ``usage`` events made from the gateway's records of its calls.

Lean on purpose (no httpx): the runner imports it in every ``hal run``.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from hal9999 import fs
from hal9999.agents.base import Agent, AgentSettings
from hal9999.agents.registry import upstream_key_env as upstream_key_env  # re-exported
from hal9999.allowlist import intersect
from hal9999.config import HalConfig
from hal9999.errors import BudgetExceeded, GatewayError, HalError, ModelNotAllowed
from hal9999.events.models import EgressDenied, Event, UpstreamWait, Usage
from hal9999.gateway.channel import (
    CHANNEL_TARGET,
    TOKEN_PREFIX,
    GatewayPaths,
    Grant,
    drain,
    forward_port,
    new_token,
    register,
    unregister,
)
from hal9999.providers.base import Sandbox, SocketForwarding
from hal9999.spec import Bind
from hal9999.store import Store
from hal9999.values import check_base_url

if TYPE_CHECKING:
    from hal9999.store.gateway import GatewayRequest

TOKEN_VAR = "HAL_GATEWAY_TOKEN"
"""The exec-time variable carrying the placeholder token (the launcher copies it to the
variable the agent reads its key from)."""
USAGE_POLL_S = 0.5
REGISTER_S = 2.0
"""How often a run makes sure the gateway holds its grant (a gateway that died and was
started again, by this run or another, has none until its runs register again)."""
SHIELD_MIN_CHARS = 12
"""A key at least this long is replaced wherever a variable's value holds it (``Bearer
KEY``); a shorter one (a test's dummy) only where a value is the key: inside other values
it could be any word."""
ROUTE_FILE = "gateway.json"
"""A run's token, port and progress, in its session's host-only run dir: what a runner that
adopts the live agent needs to register the same token again (never the key)."""
logger = logging.getLogger(__name__)


def saved_token(run_dir: Path) -> str | None:
    """The placeholder token a run in ``run_dir`` holds (its :data:`ROUTE_FILE`'s), or None."""
    try:
        saved = json.loads((run_dir / ROUTE_FILE).read_text())
    except (OSError, ValueError):
        return None
    token = saved.get("token") if isinstance(saved, dict) else None
    return token if isinstance(token, str) and token.startswith(TOKEN_PREFIX) else None


@dataclass
class GatewayRoute:
    """One task's way to its LLM through the gateway."""

    paths: GatewayPaths
    grant: Grant
    port: int
    usage: GatewayUsage | None = None
    """Turns the run's recorded calls into events (set when the run registers)."""
    forwarder: bool = True
    """Whether the launcher starts the in-sandbox forwarder (False once the provider
    forwards the ports itself, see :meth:`connect`)."""
    run_dir: Path | None = None
    """The session's run dir, where :data:`ROUTE_FILE` is kept (None: not kept)."""
    registered: float = 0.0
    """When the grant was last handed to the gateway (monotonic)."""

    @property
    def base_url(self) -> str:
        """The agent's base URL inside the sandbox: the forwarder, with the upstream's path."""
        path = urlsplit(self.grant.upstream).path.rstrip("/")
        return f"http://127.0.0.1:{self.port}{path}"

    def agent_settings(self, settings: AgentSettings) -> AgentSettings:
        """``settings`` pointing the agent at the gateway, holding the placeholder token."""
        return replace(settings, base_url=self.base_url, api_key_env=TOKEN_VAR)

    def launcher_env(self, *, egress: bool) -> dict[str, str]:
        """What the launcher needs to start the forwarder (and, with ``egress``, to route
        other traffic through the egress proxy: a sandbox without network). Where the
        provider forwards the ports itself (:meth:`connect`) no forwarder is started:
        ``HAL_GATEWAY_DIR`` is left out."""
        env = {"HAL_GATEWAY_PORT": str(self.port)}
        if self.forwarder:
            env["HAL_GATEWAY_DIR"] = CHANNEL_TARGET
        if egress:
            env["HAL_EGRESS_PORT"] = str(self.port + 1)
        return env

    async def connect(self, sandbox: Sandbox) -> None:
        """Reach the gateway from ``sandbox``: a provider that forwards sockets itself (a
        microVM, whose shared directories cannot carry a unix socket) gets the data port
        and, with no network, the egress port forwarded now; any other sandbox runs the
        in-sandbox forwarder from its launcher (over the bound channel directory)."""
        if isinstance(sandbox, SocketForwarding):
            await sandbox.forward_socket(self.port, self.paths.socket)
            if sandbox.spec.network == "none":
                await sandbox.forward_socket(self.port + 1, self.paths.egress_socket)
            self.forwarder = False
        self.save()

    def save(self) -> None:
        """Keep the token, port and usage progress for a runner that adopts this run."""
        if self.run_dir is None:
            return
        if self.usage is not None:
            self.usage.on_advance = lambda _: self.save()
        data = {"token": self.grant.token, "port": self.port, "forwarder": self.forwarder,
                "last_id": self.usage.last_id if self.usage is not None else 0}  # fmt: skip
        fs.write_json(self.run_dir / ROUTE_FILE, data, mode=0o600, durable=False)

    async def keep_registered(self) -> None:
        """Hand the grant to the gateway again every :data:`REGISTER_S` (starting one when
        none answers), so a gateway killed or restarted under a live agent serves it again
        within seconds; a failure is logged and tried again next time."""
        now = time.monotonic()
        if now - self.registered < REGISTER_S:
            return
        self.registered = now
        try:
            await register(self.paths, self.grant)
        except (GatewayError, OSError) as exc:
            logger.warning("task %s: cannot register with the LLM gateway: %s",
                           self.grant.task_id, exc)  # fmt: skip

    def bind(self) -> Bind:
        """The channel directory, read-only inside the sandbox."""
        return Bind(source=self.paths.channel, target=CHANNEL_TARGET, read_only=True)

    def secrets(self) -> dict[str, str]:
        """Exec-time variables the agent gets (the token; masked like any secret)."""
        return {TOKEN_VAR: self.grant.token}

    def shield(self, env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
        """``env`` with the upstream key replaced by the placeholder token wherever a value
        holds it, and the names of the variables that did. Replaced, not refused: a
        variable the user forwards for the agent's API (``--env OPENAI_API_KEY``) is what
        the gateway stands in for, and the token works wherever the key would have."""
        key, token = self.grant.key, self.grant.token
        if len(key) < SHIELD_MIN_CHARS:  # a short dummy key would match inside any value
            held = sorted(n for n, v in env.items() if v == key)
            return {n: token if n in held else v for n, v in env.items()}, held
        held = sorted(n for n, v in env.items() if key in v)
        return {n: v.replace(key, token) if n in held else v for n, v in env.items()}, held

    async def open(self) -> None:
        """Start the gateway if needed and register the task's grant."""
        self.paths.channel.mkdir(parents=True, exist_ok=True)
        await register(self.paths, self.grant)
        self.registered = time.monotonic()

    def refusal(self, store: Store) -> HalError | None:
        """The error that ends the task when the gateway refused one of its calls for a
        budget or a model outside the allow-list (None when it refused nothing)."""
        if store.gateway_refused(self.grant.task_id, "budget_exceeded"):
            return BudgetExceeded(
                "the task reached its budget: the LLM gateway refused further model calls",
                hint=f"see `hal task requests {self.grant.task_id}`; raise --max-cost or "
                "--max-tokens (or [gateway] budgets) and `hal task resume` it",
            )
        refused = store.gateway_refused_models(self.grant.task_id, "model_not_allowed")
        if refused or store.gateway_refused(self.grant.task_id, "model_not_allowed"):
            return self._model_refused(refused)
        return None

    def _model_refused(self, models: list[str]) -> ModelNotAllowed:
        """The error of a run whose calls to ``models`` the gateway refused: each named with
        why (outside ``[gateway] models``, or unpriced under a cost budget) and the fix."""
        see = f"see `hal task requests {self.grant.task_id}`"
        allowed = self.grant.models
        if not models:
            return ModelNotAllowed(
                "the agent asked for a model outside the allow-list ([gateway] models), or "
                "for one with no price under a cost budget ([gateway.prices])",
                hint=see,
            )
        outside = [m for m in models if allowed is not None and m not in allowed]
        unpriced = [m for m in models if m not in outside]
        if outside:
            named = ", ".join(repr(m) for m in outside)
            return ModelNotAllowed(
                f"the LLM gateway refused model {named}: not in the allow-list "
                f"([gateway] models: {', '.join(allowed or [])})",
                hint=f"add it to [gateway] models, or give the agent an allowed model; {see}",
            )
        named = ", ".join(repr(m) for m in unpriced)
        first = unpriced[0]
        return ModelNotAllowed(
            f"the LLM gateway refused model {named}: it has no price, and the task has a cost "
            "budget no unpriced call would count against",
            hint=f'give it a price in [gateway.prices."{first}"] (input and output, USD per '
            f"million tokens), or run without --max-cost; {see}",
        )

    async def settle(self) -> None:
        """Wait until the gateway has recorded every call of the run so far."""
        await drain(self.paths)

    async def close(self) -> None:
        """Withdraw the grant: the token stops working, calls in flight are aborted."""
        await unregister(self.paths, self.grant.token)


def route_for(
    config: HalConfig,
    agent: Agent,
    task_id: str,
    environ: Mapping[str, str],
    secrets: Mapping[str, str],
    *,
    budget: Path | None = None,
    provider: str | None = None,
    keys: Mapping[str, str] | None = None,
) -> GatewayRoute | None:
    """The gateway route of a task, or None when its agent goes direct (gateway off, an agent
    that names no upstream, or no key on the host to give the gateway). The key is the
    caller's (``keys``: a daemon's client sends it), a value given to the task, or this
    process's environment's. Its egress hosts are ``[gateway] egress``, the ``provider``'s
    own list and the task's ``--egress``."""
    gateway = config.gateway
    choose = getattr(agent, "gateway_upstream", None)
    if not gateway.enabled or choose is None:
        return None
    chosen = choose(config.agent_settings(agent.name))
    if chosen is None:
        return None
    upstream, key_env = chosen
    max_tokens, max_cost_usd = load_budget(budget) if budget is not None else (None, None)
    key = (
        (keys or {}).get(key_env)
        or secrets.get(key_env)
        or host_key(config, agent, key_env, environ)
    )
    if not key:
        return None
    check_base_url(agent.name, upstream)  # never the agent going direct with the key
    grant = Grant(
        task_id=task_id,
        token=new_token(),
        upstream=upstream,
        key=key,
        models=list(gateway.models) if gateway.models is not None else None,
        max_tokens=max_tokens or gateway.max_tokens,
        max_cost_usd=max_cost_usd or gateway.max_cost_usd,
        settings=gateway.model_dump(
            mode="json", exclude={"egress", "enabled", "provider_egress", "egress_only"}
        ),
        egress=[
            *gateway.egress,
            *gateway.provider_egress.get(provider or "", []),
            *(load_egress(budget) if budget is not None else []),
        ],
        egress_only=_egress_only(gateway.egress_only, budget),
        mask=sorted(set(secrets.values())) if gateway.store_bodies else [],
    )
    return GatewayRoute(
        paths=GatewayPaths(config.home), grant=grant, port=forward_port(task_id), run_dir=budget
    )


def _egress_only(configured: list[str] | None, run_dir: Path | None) -> list[str] | None:
    """The narrowing list of a task: config's (a project's hal.toml may set it) and the
    task's own (``--egress-only``) intersected; None when neither narrows."""
    own = load_egress_only(run_dir) if run_dir is not None else None
    if own is None:
        return None if configured is None else list(configured)
    return own if configured is None else intersect(own, configured)


def restore_route(
    config: HalConfig,
    agent: Agent,
    task_id: str,
    environ: Mapping[str, str],
    secrets: Mapping[str, str],
    *,
    run_dir: Path,
    store: Store,
    provider: str | None = None,
    keys: Mapping[str, str] | None = None,
) -> GatewayRoute | None:
    """The route of a live run that this process adopts: the same token, port and forwarder
    as when it was launched (from :data:`ROUTE_FILE`), the key read again from this host's
    environment or credentials, and usage events from the first call not yet emitted. None
    when the run did not go through the gateway (or this process has no key for it)."""
    try:
        saved = json.loads((run_dir / ROUTE_FILE).read_text())
    except (OSError, ValueError):
        return None
    route = route_for(
        config, agent, task_id, environ, secrets, budget=run_dir, provider=provider, keys=keys
    )
    token = saved.get("token") if isinstance(saved, dict) else None
    if route is None or not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        return None
    route.grant = replace(route.grant, token=token)
    route.port = int(saved.get("port", route.port))
    route.forwarder = bool(saved.get("forwarder", True))
    route.usage = GatewayUsage(store, task_id, after=int(saved.get("last_id", 0)),
                               max_retries=config.gateway.max_retries)  # fmt: skip
    route.usage.on_advance = lambda _: route.save()
    return route


BUDGET_FILE = "budget.json"
"""A task's own budget and egress hosts (``hal run --max-tokens/--max-cost/--egress``), in
its session's run dir."""


def save_budget(
    run_dir: Path,
    max_tokens: int | None,
    max_cost_usd: float | None,
    egress: list[str] | None = None,
    egress_only: list[str] | None = None,
) -> None:
    """Record a task's own budget and egress hosts (added, and the narrowing list) for every
    run of it (resumes included)."""
    if max_tokens is None and max_cost_usd is None and not egress and egress_only is None:
        return
    data = {"max_tokens": max_tokens, "max_cost_usd": max_cost_usd, "egress": egress or [],
            "egress_only": egress_only}  # fmt: skip
    fs.write_json(run_dir / BUDGET_FILE, data, mode=None, durable=False)


def load_budget(run_dir: Path) -> tuple[int | None, float | None]:
    """A task's own budget; none recorded gives ``(None, None)``."""
    data = _task_file(run_dir)
    tokens, cost = data.get("max_tokens"), data.get("max_cost_usd")
    return (
        int(tokens) if isinstance(tokens, int) else None,
        float(cost) if isinstance(cost, int | float) else None,
    )


def load_egress(run_dir: Path) -> list[str]:
    """A task's own egress hosts (``hal run --egress``)."""
    hosts = _task_file(run_dir).get("egress")
    return [str(h) for h in hosts] if isinstance(hosts, list) else []


def load_egress_only(run_dir: Path) -> list[str] | None:
    """A task's narrowing egress list (``hal run --egress-only``); None when it gave none."""
    hosts = _task_file(run_dir).get("egress_only")
    return [str(h) for h in hosts] if isinstance(hosts, list) else None


def _task_file(run_dir: Path) -> dict[str, object]:
    try:
        data = json.loads((run_dir / BUDGET_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def host_key(config: HalConfig, agent: Agent, key_env: str, environ: Mapping[str, str]) -> str:
    """``agent``'s key from ``environ``'s ``key_env``, else a ``hal auth`` sign-in stored
    under the home ('' when neither has one)."""
    key = environ.get(key_env)
    if key:
        return key
    from hal9999.auth.upstream import stored_key  # it imports httpx: only when needed

    return stored_key(config.home, agent.name, key_env) or ""


def missing_key(config: HalConfig, agent: Agent, environ: Mapping[str, str]) -> str | None:
    """The host variable ``agent``'s LLM gateway would take its key from when neither
    ``environ`` nor a ``hal auth`` sign-in has one; None when one is there, or when the agent
    does not go through the gateway."""
    choose = getattr(agent, "gateway_upstream", None)
    if not config.gateway.enabled or choose is None:
        return None
    chosen: tuple[str, str] | None = choose(config.agent_settings(agent.name))
    if chosen is None or host_key(config, agent, chosen[1], environ):
        return None
    return chosen[1]


def goes_through_gateway(config: HalConfig, agent: Agent, environ: Mapping[str, str]) -> bool:
    """Whether ``agent`` would reach its LLM through the gateway (so it needs no network)."""
    return route_for(config, agent, "probe", environ, {}) is not None


def forwarder_path() -> str:
    """The forwarder script inside a sandbox."""
    return posixpath.join(CHANNEL_TARGET, "forwarder.py")


class GatewayUsage:
    """Turns a task's new ``gateway_requests`` rows into ``usage`` events (polled)."""

    def __init__(
        self, store: Store, task_id: str, *, after: int | None = None,
        max_retries: int | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.task_id = task_id
        self.max_retries = max_retries
        """``[gateway] max_retries`` of the task, told in its ``upstream_wait`` events."""
        if after is None:  # a new run: its own calls, from here on
            after = max((r.id or 0 for r in store.gateway_requests(task_id)), default=0)
        self.last_id = after
        self.on_advance: Callable[[int], None] | None = None
        """Told the new ``last_id`` after a pump that emitted something."""
        self._polled = 0.0

    def pump(self, emit: Callable[[Event], None], *, final: bool = False) -> None:
        """Emit a usage event for each call recorded since the last pump (an
        ``egress_denied`` event for each refused connection, an ``upstream_wait`` event for
        each wait of a call on its upstream)."""
        now = time.monotonic()
        if not final and now - self._polled < USAGE_POLL_S:
            return
        self._polled = now
        first = self.last_id
        for row in self.store.gateway_requests(self.task_id, after=self.last_id):
            self.last_id = row.id or self.last_id
            if row.error == "upstream_wait":
                emit(_upstream_wait(row, self.max_retries))
                continue
            if row.error == "egress_denied":
                host, _, port = row.path.rpartition(":")
                number = int(port) if port.isascii() and port.isdigit() else None  # not "²"
                emit(EgressDenied(host=host or row.path, port=number, method=row.method))
                continue
            emit(
                Usage(
                    input_tokens=row.input_tokens,
                    output_tokens=row.output_tokens,
                    cache_read_tokens=row.cache_read_tokens,
                    cache_write_tokens=row.cache_write_tokens,
                    cost_usd=row.cost_usd,
                    source="gateway",
                    model=row.model,
                    status=row.status,
                    latency_ms=row.latency_ms,
                )
            )
        if self.last_id != first and self.on_advance is not None:
            self.on_advance(self.last_id)


def _upstream_wait(row: GatewayRequest, max_retries: int | None) -> UpstreamWait:
    """The event of a row recording a call's wait on its upstream (see ``UPSTREAM_WAIT``)."""
    from hal9999.gateway.limits import RETRY_REASONS

    reason = RETRY_REASONS.get(row.status, "error")
    return UpstreamWait(status=row.status, wait_s=row.latency_ms / 1000, retry=row.retries,
                        retries=max_retries, reason=reason, model=row.model)  # fmt: skip
