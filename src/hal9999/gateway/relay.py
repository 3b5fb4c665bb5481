"""An upstream's answer on its way to the agent: the key masked out, the usage read, and its
end held until the call's row is committed.

An upstream may echo the key it was sent (``invalid x-api-key sk-...``): the answer's headers
and body are masked with the credentials the call sent, the body as a stream (a key split
across reads is masked whole; bytes map 1:1 to latin-1 text). Masking changes the length, so
the agent's answer is chunked (or ends with the connection) whatever the upstream's framing.

A call holds its upstream slot (:class:`~hal9999.gateway.limits.Slot`) while it waits on the
upstream, not while it waits on its agent: when the agent has not taken what was written to
it within :data:`GIVE_BACK_S` (a stream it does not read), the call gives its slot back to the
other calls, and takes one again, fairly, before it reads more of the upstream's answer. An
agent that takes nothing for :data:`STALLED_S` has its call cut, as if it had hung up (the
rest of the answer is read for its usage, and recorded with the error ``agent_stalled``), so
an unread answer holds its place among the task's calls in flight for a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hal9999.gateway.channel import Grant
from hal9999.gateway.ledger import Ledger
from hal9999.gateway.limits import Slot
from hal9999.gateway.prices import PriceBook
from hal9999.gateway.upstream import UpstreamResponse
from hal9999.gateway.usage import UsageMeter, cost_usd
from hal9999.gateway.wire import Answer
from hal9999.redact import SecretMasker
from hal9999.store.gateway import GatewayRequest

logger = logging.getLogger(__name__)

HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
     "upgrade", "host", "content-length", "accept-encoding", "proxy-authorization", "expect"}
)  # fmt: skip
"""Headers of one hop, never passed on (either way)."""

GIVE_BACK_S = 0.5
"""How long a write to the agent may wait before its call gives its upstream slot back."""
STALLED_S = 300.0
"""How long an agent may take nothing of its answer before the call is cut."""


class AgentStalled(ConnectionAbortedError):
    """The agent took nothing of its answer for :data:`STALLED_S`."""


async def drain(writer: asyncio.StreamWriter, slot: Slot) -> None:
    """Wait until the agent took what was written to it; meanwhile, past
    :data:`GIVE_BACK_S`, without the call's upstream slot (see the module's docstring)."""
    transport = writer.transport
    if not transport.get_write_buffer_size():  # all handed to the socket: no wait, no timer
        await writer.drain()
        return
    try:
        async with asyncio.timeout(GIVE_BACK_S):
            await writer.drain()
        return
    except TimeoutError:
        pass
    slot.give_back()
    try:
        async with asyncio.timeout(max(0.0, STALLED_S - GIVE_BACK_S)):
            await writer.drain()
    except TimeoutError:
        raise AgentStalled(f"the agent took nothing of its answer for {STALLED_S:g}s") from None
    await slot.take()


RecordCall = Callable[..., "asyncio.Future[None] | None"]
"""``Gateway.record_call``: stores a call's row; the future resolves once it is committed."""


class AnswerRelay:
    """Relays upstream answers to agents, masked and metered; one masker per grant."""

    def __init__(self, ledger: Ledger, prices: PriceBook, record_call: RecordCall) -> None:
        self.ledger = ledger
        self.prices = prices
        self.record_call = record_call
        self._maskers: dict[str, tuple[str, SecretMasker]] = {}
        """By token: the key its calls last sent, and the masker that keeps it out of the
        upstream's answers."""

    def masker(self, grant: Grant, key: str) -> SecretMasker:
        """The masker of the credentials ``grant``'s calls send upstream (``key``, and the
        grant's own key or sign-in reference): an upstream may echo them in an answer."""
        known = self._maskers.get(grant.token)
        if known is not None and known[0] == key:
            return known[1]
        masker = SecretMasker([key, grant.key])
        self._maskers[grant.token] = (key, masker)
        return masker

    def forget(self, token: str) -> None:
        """Drop the masker of a grant withdrawn or replaced (its key leaves memory with it)."""
        self._maskers.pop(token, None)

    async def relay(
        self,
        out: Answer,
        response: UpstreamResponse,
        record: GatewayRequest,
        started: float,
        grant: Grant,
        masker: SecretMasker,
        slot: Slot,
    ) -> None:
        """Stream ``response`` to the agent masked, and record the call before its end."""
        meter = UsageMeter()
        record.status = response.status
        headers = [(k, masker.mask(v)) for k, v in response.headers if k not in HOP_HEADERS]
        masked = masker.stream()
        # The end of the answer (its last chunk) waits until the call's row is committed: an
        # agent never holds a whole answer whose spend a killed gateway could forget, and its
        # first byte never waits.
        recorded = False
        writer = out.writer
        try:
            # The head goes out with the first bytes of the body when they came with it
            # (one write, one wake-up of the agent), else at once.
            out.start(response.status, headers, None, hold=response.ready())
            try:
                while chunk := await response.read():
                    meter.feed(chunk)
                    out.data(masked.feed(chunk.decode("latin-1")).encode("latin-1"))
                    await drain(writer, slot)
            except ConnectionError as exc:
                # The agent hung up mid-answer. A stream's usage comes at its end, after the
                # text: an agent that left once it had the text had the call recorded with
                # what was read (OpenAI's: nothing). The rest is read for its usage, within
                # the call's own cap (its reservation); a withdrawn grant still aborts it.
                if isinstance(exc, AgentStalled):
                    record.error = "agent_stalled"
                await slot.take()  # reading the upstream holds a slot again
                while chunk := await response.read():
                    meter.feed(chunk)
                raise
            await response.aclose()
            self.measure(record, meter, grant)
            recorded = True
            committed = self.record_call(record, started, status=record.status)
            if committed is not None:
                await committed
            if record.task_id in self.ledger.unrecorded:  # the spend is not in the store:
                raise ConnectionAbortedError("withheld: the call's spend was not recorded")
            out.data(masked.flush().encode("latin-1"))
            out.end()
            await drain(writer, slot)
        finally:
            await response.aclose()
            if not recorded:  # cut short (the agent left, the task ended): record what was
                try:
                    self.measure(record, meter, grant)
                except Exception:  # a figure we cannot read must not lose the call's record
                    logger.exception("gateway: could not read the usage of a call")
                self.record_call(record, started, status=record.status)

    def measure(self, record: GatewayRequest, meter: UsageMeter, grant: Grant) -> None:
        """Fill ``record``'s model, tokens and cost from what ``meter`` read."""
        usage = meter.close()
        record.model = meter.model or record.model
        price = self.prices.of(grant.token, grant.settings.get("prices", {}), record.model)
        record.input_tokens, record.output_tokens = usage.input, usage.output + usage.thoughts
        record.cache_read_tokens = usage.cache_read
        record.cache_write_tokens = usage.cache_write
        record.total_tokens = usage.total
        record.cost_usd = cost_usd(usage, price) if usage.total else None
