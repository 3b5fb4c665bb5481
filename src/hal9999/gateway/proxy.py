"""The LLM gateway: placeholder token in, real key out, usage and budgets at the choke point.

An agent's request arrives on the data socket (through the in-sandbox forwarder) carrying its
task's placeholder token where an API key goes (``authorization: Bearer``, ``x-api-key``,
``x-goog-api-key``, ``api-key`` or ``?key=``). The gateway finds the task's :class:`Grant` by
that token (any other token is refused, 401), checks the model allow-list and the budgets
(refusals are 400-class, which the agent CLIs treat as final), swaps the token for the real
key and forwards the request to the task's upstream on a kept connection of the
:class:`UpstreamPool` (HTTP/1.1 over asyncio streams, TLS verified; no cookie jar shared
between tasks, no redirects), streaming the answer back unbuffered while a
:class:`UsageMeter` reads the usage out of it. Each call becomes a
``gateway_requests`` row (committed by the :class:`Ledger` before the agent has the end of
its answer), which the task's runner turns into a ``usage`` event.

The HTTP of both hops is the gateway's own (:mod:`hal9999.gateway.wire` on the agent's
side, :mod:`hal9999.gateway.upstream` on the upstream's): lean enough that the gateway's CPU
per call stays a fraction of a millisecond.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from hal9999.auth.upstream import oauth_headers, upstream_key
from hal9999.errors import GatewayError, HalError
from hal9999.gateway import door, refusal
from hal9999.gateway.bodies import StoredBodies
from hal9999.gateway.channel import TOKEN_PREFIX, GatewayPaths, Grant
from hal9999.gateway.held import HeldBodies
from hal9999.gateway.inflight import (
    ASSUMED_MAX_OUTPUT_TOKENS,
    InFlight,
    Limit,
    Reservation,
    reservation,
)
from hal9999.gateway.ledger import Ledger
from hal9999.gateway.limits import (
    RETRY_STATUSES,
    UPSTREAM_WAIT,
    Slot,
    UpstreamLimiter,
    retry_after_s,
)
from hal9999.gateway.model import ModelRequest, Unreadable, check_metered, read_model
from hal9999.gateway.prices import PriceBook, dearer
from hal9999.gateway.refusal import send as _send_refusal
from hal9999.gateway.relay import HOP_HEADERS, AnswerRelay
from hal9999.gateway.upstream import UpstreamError, UpstreamPool, ca_file_error
from hal9999.gateway.wire import Answer, BadRequest, Request, read_request
from hal9999.store import Store
from hal9999.store.gateway import GatewayRequest

logger = logging.getLogger(__name__)

_KEY_HEADERS = ("x-api-key", "x-goog-api-key", "api-key")


MAX_MODEL_CHARS = 200
"""The longest model name a call's row keeps (a refused one is the agent's own text)."""
MAX_CALLS = 64
"""Calls one task may have in flight at once (queued for the upstream's limiter included):
past them 429 ``too_many_calls``. Each held a connection (a descriptor of the gateway every
task's calls go through) and a place in the limiter's queue, ahead of other tasks' calls."""


class Gateway:
    """The data plane: grants by token, shared limiters, one upstream connection pool."""

    def __init__(self, store: Store, paths: GatewayPaths | None = None) -> None:
        self.store = store
        self.grants: dict[str, Grant] = {}
        self.limiters: dict[str, UpstreamLimiter] = {}
        self._limiter_of: dict[str, UpstreamLimiter] = {}
        """Each grant's limiter, by token (naming it hashes the key: once per grant)."""
        self.inflight: dict[str, set[asyncio.Task[Any]]] = {}
        self.tunnels: dict[str, set[asyncio.Task[Any]]] = {}
        """The egress proxy's open tunnels, by token: closed with their grant."""
        self.held: dict[str, int] = {}
        """Bytes of request bodies read or being read, by token (see :class:`HeldBodies`)."""
        # The calls the store refuses are kept in the gateway's directory across a restart.
        self.ledger = Ledger(store, (paths or GatewayPaths(store.path.parent)).unrecorded)
        self.refusals = refusal.RefusalLimit()
        self.bodies = StoredBodies()
        self.prices = PriceBook()
        self.relay = AnswerRelay(self.ledger, self.prices, self.record_call)
        self.flights = InFlight()
        """The reservations of budgeted tasks' calls in flight, by task (see inflight.py)."""
        self.day_flights = InFlight()
        """The reservations of calls in flight under a daily budget, by UTC day."""
        self.client = UpstreamPool()
        self.clients: dict[str, UpstreamPool] = {}
        """Pools for upstreams behind a private CA, by CA file."""
        self.last_active = time.monotonic()
        self.door = door.Door()
        """Connections waiting for their request, bounded per sandbox and in all."""

    # -- grants ---------------------------------------------------------------------------
    def register(self, grant: Grant) -> None:
        """Accept ``grant``'s token from now on."""
        if not grant.token.startswith(TOKEN_PREFIX) or not grant.key:
            raise ValueError("a grant needs a gateway token and a key")
        self.grants[grant.token] = grant
        self._limiter_of.pop(grant.token, None)
        self.relay.forget(grant.token)
        self.prices.forget(grant.token)  # its config may have changed (a new runner)
        self.last_active = time.monotonic()

    def unregister(self, token: str) -> None:
        """Refuse ``token`` from now on and abort its calls in flight and its tunnels."""
        grant = self.grants.pop(token, None)
        if grant is not None:
            self.refusals.forget(grant.task_id)
        self._limiter_of.pop(token, None)
        self.relay.forget(token)
        self.bodies.forget(token)
        self.prices.forget(token)
        for task in (*self.inflight.pop(token, ()), *self.tunnels.pop(token, ())):
            task.cancel()
        self.last_active = time.monotonic()

    def limiter(self, grant: Grant) -> UpstreamLimiter:
        """The shared limiter of ``grant``'s upstream and key."""
        known = self._limiter_of.get(grant.token)
        if known is not None:
            return known
        origin = _origin(grant.upstream)
        name = origin + " " + hashlib.sha256(grant.key.encode()).hexdigest()[:16]
        if name not in self.limiters:
            settings = grant.settings
            self.limiters[name] = UpstreamLimiter(
                int(settings.get("concurrency", 8)), settings.get("requests_per_minute")
            )
        self._limiter_of[grant.token] = self.limiters[name]
        return self.limiters[name]

    def client_for(self, grant: Grant) -> UpstreamPool:
        """The shared pool, or the one trusting the grant's extra CA file."""
        ca_file = grant.settings.get("ca_file")
        if not ca_file:
            return self.client
        if ca_file not in self.clients:
            self.clients[ca_file] = UpstreamPool(str(ca_file))
        return self.clients[ca_file]

    async def aclose(self) -> None:
        """Close every upstream client and the ledger (after :meth:`drain`)."""
        for client in [self.client, *self.clients.values()]:
            await client.aclose()
        self.ledger.close()

    # -- serving --------------------------------------------------------------------------
    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer HTTP/1.1 requests on one connection until it closes."""
        held = HeldBodies(self._grant_of, self.held)
        peer = door.peer_of(writer)
        try:
            while True:
                if not self.door.enter(peer):
                    await _send_refusal(Answer(writer, None), 503, "too_many_connections",
                                        "hal gateway: too many connections are waiting to send"
                                        " a request; close the idle ones")  # fmt: skip
                    await self.door.linger(reader, writer)
                    return
                refused: BadRequest | None = None
                try:
                    async with asyncio.timeout(door.REQUEST_S):
                        request = await read_request(reader, writer, held)
                except TimeoutError:
                    return  # nothing, or too little, sent in time: the connection goes
                except BadRequest as exc:
                    refused = exc
                finally:
                    self.door.leave(peer)
                if refused is not None:  # no longer waiting, and its body no longer held
                    held.release()
                    await _send_refusal(Answer(writer, None), refused.status, refused.code,
                                        f"hal gateway: {refused}")  # fmt: skip
                    await self.door.linger(reader, writer)
                    return
                if request is None:
                    return
                answer = Answer(writer, request)
                try:
                    await self.answer(answer, request)
                finally:
                    held.release()
                if not answer.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except UpstreamError as exc:  # the answer broke off: the agent sees it cut short
            logger.warning("gateway: an upstream answer broke off: %s", exc)
        except Exception:
            logger.exception("gateway connection failed")
        finally:
            held.release()
            writer.close()

    async def answer(self, out: Answer, request: Request) -> None:
        """One request: find its grant, check it, forward it, record it."""
        started, wall = time.monotonic(), time.time()
        self.last_active = started
        headers, target, method, body = (request.headers, request.target, request.method,
                                         request.body)  # fmt: skip
        token, grant = self._grant_of(headers, target)
        if grant is None:
            await _send_refusal(out, 401, "unknown_token", "no valid hal gateway token")
            return
        path = urlsplit(target).path
        # Parsing a long conversation costs CPU by its size: only for an allow-list or a
        # cost budget (the response names the model anyway), read strictly (see model.py),
        # or a token budget (the call's output cap: see inflight.py).
        strict = grant.models is not None or _cost_capped(grant)
        parsed = strict or grant.max_tokens is not None or _daily(grant) is not None
        unreadable = None
        try:
            if parsed:
                check_metered(path)
            wants = read_model(method, path, headers, body if parsed else b"", strict=strict)
            if parsed and wants.background:  # its usage is in an answer it does not wait for
                raise Unreadable(403, "a background response is billed after the call ends, "
                                      "past the gateway's metering; a task with a budget or a "
                                      "model allow-list makes each call itself")  # fmt: skip
        except Unreadable as exc:  # its model may read otherwise upstream: never forwarded
            code = "not_metered" if exc.status == 403 else "bad_request"
            wants, unreadable = ModelRequest(), (exc.status, code, f"hal gateway: {exc}")
        record = GatewayRequest(
            task_id=grant.task_id, ts=wall, method=method, path=path[:500], model=wants.model,
            status=0, latency_ms=0.0, body=self.bodies.stored(grant, body),
        )  # fmt: skip
        if grant.task_id in self.ledger.unrecorded:  # its refused rows are written again
            await self.ledger.recover(grant.task_id)
        problem = unreadable or self._refused(grant, wants)
        if problem is None and len(self.inflight.get(token, ())) >= MAX_CALLS:
            problem = 429, "too_many_calls", (f"hal gateway: this task has {MAX_CALLS} calls "
                                              "in flight; wait for one to end")  # fmt: skip
        if problem is not None:
            await self._refuse(out, record, started, *problem)
            return
        reserve = self._reservation(grant, wants, method, len(body))
        task = asyncio.current_task()
        assert task is not None
        self.inflight.setdefault(token, set()).add(task)
        try:
            held: list[tuple[InFlight, str]] = []
            if reserve is not None:
                admitted = await self._admitted(out, grant, wants, record, started, reserve)
                if admitted is None:
                    return
                held = admitted
            self.ledger.open(record)
            try:
                await self._forward(out, grant, (method, target, headers, body), wants, record,
                                    started)  # fmt: skip
            finally:
                if reserve is not None:
                    for flights, scope in held:
                        flights.remove(scope, reserve)
        except asyncio.CancelledError:
            self.record_call(record, started, status=record.status or 499, error="aborted")
            raise
        finally:
            self.inflight.get(token, set()).discard(task)

    def _reservation(
        self, grant: Grant, wants: ModelRequest, method: str, size: int
    ) -> Reservation | None:
        """The most the call may spend, when its task or the day has a budget and it may
        spend at all (see inflight.py)."""
        if grant.max_tokens is None and grant.max_cost_usd is None and _daily(grant) is None:
            return None
        if method in ("GET", "HEAD") and not size:  # asks for nothing to be generated
            return None
        if wants.stored_input:  # input the upstream holds: its size bounds nothing, it goes alone
            return Reservation(None, None)
        table = grant.settings.get("prices", {})
        price: Mapping[str, float | None] | None = self.prices.of(grant.token, table, wants.model)
        for other in wants.models[1:]:  # a Gemini or Azure path's, which the upstream serves
            price = dearer(price, self.prices.of(grant.token, table, other))
        assumed = grant.settings.get("assumed_max_output_tokens") or ASSUMED_MAX_OUTPUT_TOKENS
        return reservation(size, wants.output_cap, price, cost=_cost_capped(grant),
                           assumed_output=assumed, choices=wants.choices)  # fmt: skip

    def _budgets(self, grant: Grant) -> list[tuple[InFlight, str, Limit, tuple[int, float]]]:
        """The budgets a call of ``grant`` reserves under: its calls in flight there, the
        scope (its task, today), the limit and the scope's spend so far."""
        budgets: list[tuple[InFlight, str, Limit, tuple[int, float]]] = []
        if grant.max_tokens is not None or grant.max_cost_usd is not None:
            limit = (grant.max_tokens, grant.max_cost_usd)
            spent = self.ledger.task_spent(grant.task_id)
            budgets.append((self.flights, grant.task_id, limit, spent))
        daily = _daily(grant)
        if daily is not None:
            spent = self.ledger.day_spent()
            budgets.append((self.day_flights, self.ledger.today(), daily, spent))
        return budgets

    async def _admitted(
        self, out: Answer, grant: Grant, wants: ModelRequest, record: GatewayRequest,
        started: float, reserve: Reservation,
    ) -> list[tuple[InFlight, str]] | None:  # fmt: skip
        """Wait until the call fits in each of its budgets (its task's, the day's) beside the
        calls in flight there, then count it in flight in each: where it is held, or None
        when it was refused meanwhile (a budget spent)."""
        while True:
            budgets = self._budgets(grant)
            full = [(flights, scope) for flights, scope, limit, spent in budgets
                    if not flights.fits(scope, limit, spent, reserve)]  # fmt: skip
            if not full:
                break
            await full[0][0].ended(full[0][1])
            problem = self._refused(grant, wants)
            if problem is not None:
                await self._refuse(out, record, started, *problem)
                return None
        for flights, scope, _, _ in budgets:
            flights.add(scope, reserve)
        return [(flights, scope) for flights, scope, _, _ in budgets]

    def _grant_of(self, headers: list[tuple[str, str]], target: str) -> tuple[str, Grant | None]:
        for name, value in headers:
            if name == "authorization" and value.lower().startswith("bearer "):
                value = value[7:].strip()
            elif name not in _KEY_HEADERS:
                continue
            if value in self.grants:
                return value, self.grants[value]
        for name, value in parse_qsl(urlsplit(target).query):
            if name == "key" and value in self.grants:
                return value, self.grants[value]
        return "", None

    def _refused(self, grant: Grant, wants: ModelRequest) -> tuple[int, str, str] | None:
        unrecorded = self.ledger.unrecorded.get(grant.task_id)
        if unrecorded is not None:  # its spend so far is not all in the store: fail closed
            return (
                400,
                GatewayError.code,
                (
                    f"hal gateway: the spend of an earlier call of this task could not be recorded "
                    f"({unrecorded}), so it gets no more calls until it is (see the gateway's log)"
                ),
            )
        allowed = grant.models
        for model in wants.models:
            named = "the Azure deployment" if model in wants.deployments else "model"
            if allowed is not None and model not in allowed:
                return (
                    403,
                    "model_not_allowed",
                    (
                        f"hal gateway: {named} {model!r} is not allowed for this task "
                        f"(allowed: {', '.join(allowed)})"
                    ),
                )
            if _cost_capped(grant) and not self._priced(grant, model):
                # Its calls would cost null, which no cost budget counts.
                text = (f"hal gateway: {named} {model!r} has no price and the task has a cost "
                        f'budget (give it one in [gateway.prices."{model}"])')  # fmt: skip
                return 403, "model_not_allowed", text
        if grant.max_tokens is not None or grant.max_cost_usd is not None:
            spent_tokens, spent_cost = self.ledger.task_spent(grant.task_id)
            if grant.max_tokens is not None and spent_tokens >= grant.max_tokens:
                return (
                    400,
                    "budget_exceeded",
                    (f"hal gateway: the task's token budget ({grant.max_tokens}) is spent"),
                )
            if grant.max_cost_usd is not None and spent_cost >= grant.max_cost_usd:
                return (
                    400,
                    "budget_exceeded",
                    (f"hal gateway: the task's cost budget (${grant.max_cost_usd:g}) is spent"),
                )
        daily = _daily(grant)
        if daily is not None:
            daily_tokens, daily_cost = daily
            day_tokens, day_cost = self.ledger.day_spent()
            if (daily_tokens is not None and day_tokens >= daily_tokens) or (
                daily_cost is not None and day_cost >= daily_cost
            ):
                return 400, "budget_exceeded", "hal gateway: today's budget for all tasks is spent"
        return None

    async def _refuse(self, out: Answer, record: GatewayRequest, started: float, status: int,
                      code: str, text: str) -> None:  # fmt: skip
        """Answer a refusal and store it (unless throttled: :class:`refusal.RefusalLimit`)."""
        stored = await self.refusals.answer(out, record.task_id, started, status, code, text,
                                            record.path)  # fmt: skip
        if stored is not None:
            self.record_call(record, started, status=stored[0], error=stored[1])

    def _priced(self, grant: Grant, model: str) -> bool:
        return self.prices.of(grant.token, grant.settings.get("prices", {}), model) is not None

    async def _forward(
        self,
        out: Answer,
        grant: Grant,
        request: tuple[str, str, list[tuple[str, str]], bytes],
        wants: ModelRequest,
        record: GatewayRequest,
        started: float,
    ) -> None:
        method, target, headers, body = request
        url = _upstream_url(grant, target)
        try:  # a stored sign-in (hal auth claude) is resolved, and refreshed, per call
            key = await upstream_key(grant.key)
        except HalError as exc:
            await _send_refusal(out, 502, exc.code, f"hal gateway: {exc.one_line()}")
            self.record_call(record, started, status=502, error=exc.code)
            return
        live = grant if key == grant.key else replace(grant, key=key)
        out_headers = [(k, _swap(k, v, live)) for k, v in headers if k not in HOP_HEADERS]
        out_headers = oauth_headers(out_headers, grant.key)
        out_headers.append(("accept-encoding", "identity"))  # usage is read from the bytes
        try:
            client = self.client_for(grant)
        except OSError as exc:  # ssl.SSLError too: a ca_file that holds no certificate
            # Refused in words, not a dropped connection (and a traceback) on every call;
            # 400 like a budget refusal: the agent CLIs retry 5xx, and this will not heal.
            text = f"hal gateway: {ca_file_error(grant.settings.get('ca_file'), exc).one_line()}"
            await _send_refusal(out, 400, "ca_file_unusable", text, path=target)
            self.record_call(record, started, status=400, error="ca_file_unusable")
            return
        limiter = self.limiter(grant)
        slot = Slot(limiter, grant.task_id)
        retries = int(grant.settings.get("max_retries", 6))
        attempt = 0
        while True:
            await slot.take()
            try:
                # Again now that it may leave: calls queued behind this one's slot have spent
                # since it arrived (else calls fired at once would all pass the budget).
                problem = self._refused(grant, wants)
                if problem is not None:
                    await self._refuse(out, record, started, *problem)
                    return
                try:
                    response = await client.request(method, url, out_headers, body)
                except UpstreamError as exc:
                    # Nothing reached the upstream: a refused or failed connect is safe to
                    # repeat; a certificate that does not verify will not verify on a retry.
                    if attempt < retries and not exc.sent and not exc.verify_failed:
                        attempt += 1
                        self._waits(record, 0, limiter.pause(retry_after_s({}, attempt - 1)),
                                    attempt)  # fmt: skip
                        continue
                    text = f"hal gateway: upstream unreachable: {exc}"
                    await _send_refusal(out, 502, "upstream_unreachable", text)
                    self.record_call(record, started, status=502, error="upstream_unreachable")
                    return
                if response.status in RETRY_STATUSES and attempt < retries:
                    wait = limiter.pause(retry_after_s(dict(response.headers), attempt))
                    await response.aclose()
                    attempt += 1
                    self._waits(record, response.status, wait, attempt)
                    continue
                record.retries = attempt
                masker = self.relay.masker(grant, key)
                await self.relay.relay(out, response, record, started, grant, masker, slot)
                return
            finally:
                slot.give_back()

    def _waits(self, record: GatewayRequest, status: int, wait_s: float, retry: int) -> None:
        """Record that the call waits ``wait_s`` on its upstream (which answered ``status``,
        0: unreachable) before retry ``retry``: an ``upstream_wait`` row, which the task's
        runner turns into its event, so the wait shows as the upstream's and not a hung
        agent. Its ``latency_ms`` is the wait."""
        row = record.model_copy(update={"ts": time.time(), "retries": retry, "body": None})
        self.record_call(row, time.monotonic(), status=status, error=UPSTREAM_WAIT,
                         latency_ms=round(wait_s * 1000, 3))  # fmt: skip

    def record_call(
        self, record: GatewayRequest, started: float, *, status: int, **fields: Any
    ) -> asyncio.Future[None] | None:
        """Count and store one call (or refusal) with its status and latency; never raises.
        The future resolves once the row is committed."""
        record.status = status
        record.latency_ms = round((time.monotonic() - started) * 1000, 3)
        if record.model is not None:  # an agent's name for it may be megabytes
            # ... and hold a lone surrogate ("\ud800" in its JSON), which SQLite cannot
            # store: the row's batch was lost, and the calls committed with it never ended.
            model = record.model[:MAX_MODEL_CHARS]
            record.model = model.encode("utf-8", "replace").decode("utf-8")
        for name, value in fields.items():
            setattr(record, name, value)
        return self.ledger.add(record)

    async def drain(self) -> None:
        """Wait until every call so far is in the store."""
        await self.ledger.drain()


def _daily(grant: Grant) -> Limit | None:
    """The daily budget (tokens, dollars over every task of the HAL_HOME) ``grant`` has."""
    tokens, cost = grant.settings.get("daily_max_tokens"), grant.settings.get("daily_max_cost_usd")
    return None if tokens is None and cost is None else (tokens, cost)


def _cost_capped(grant: Grant) -> bool:
    return grant.max_cost_usd is not None or grant.settings.get("daily_max_cost_usd") is not None


def _origin(upstream: str) -> str:
    parts = urlsplit(upstream)
    return f"{parts.scheme}://{parts.netloc}"


def _upstream_url(grant: Grant, target: str) -> str:
    parts = urlsplit(target)
    query = [(k, grant.key if k == "key" and v == grant.token else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]  # fmt: skip
    url = _origin(grant.upstream) + (parts.path or "/")
    return url + ("?" + urlencode(query) if query else "")


def _swap(name: str, value: str, grant: Grant) -> str:
    # Only the headers a key travels in, and only the exact token: nothing else is rewritten.
    if name == "authorization" or name in _KEY_HEADERS:
        return value.replace(grant.token, grant.key)
    return value
