"""One HTTP client for cloud vendors' JSON APIs (DigitalOcean, Morph), and the base of
each vendor's typed client (:class:`VendorApi`).

Bearer auth, a timeout per call, exponential-backoff retries, the vendor's rate-limit
headers honoured, and HTTP errors mapped to hal's error tree at this boundary:

    400, 422 -> CloudValidationError    401, 403 -> CloudAuthError    404 -> CloudNotFound
    429      -> CloudRateLimited (after waiting and retrying)         5xx -> CloudServerError

What is retried: 429 always (the vendor did not act on the call), and 5xx or a transport
failure only for idempotent calls (GET, DELETE, PUT): a ``POST`` that creates a machine
may have been acted on, so its caller cleans up by tag instead of sending it twice.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from hal9999.errors import (
    CloudApiError,
    CloudAuthError,
    CloudNotFound,
    CloudRateLimited,
    CloudServerError,
    CloudValidationError,
)


def default_tls() -> ssl.SSLContext:
    """httpx's context for ``verify=True`` (its CAs, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``),
    made once per process and value of those: making one loads the CA bundle (dear in
    CPU), and a provider makes a client per operation. Connections share a context
    (httpcore sets the same ALPN, ``http/1.1``, on it for each)."""
    return _tls_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _tls_for(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context(verify=True, trust_env=True)


IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE", "PUT", "OPTIONS"})
_BY_STATUS: dict[int, type[CloudApiError]] = {
    400: CloudValidationError, 422: CloudValidationError,
    401: CloudAuthError, 403: CloudAuthError, 404: CloudNotFound,
}  # fmt: skip


@dataclass(frozen=True)
class ApiResponse:
    """A successful answer: status, parsed JSON body (None when empty) and headers."""

    status: int
    body: Any
    headers: Mapping[str, str]


@dataclass
class RetryPolicy:
    """How hard a client tries before giving up."""

    attempts: int = 5
    """Tries per call, the first included."""
    backoff_s: float = 0.5
    """First wait between tries; doubled each time, with jitter."""
    max_wait_s: float = 60.0
    """The longest single wait (a far-off rate-limit reset is not waited for)."""
    timeout_s: float = 30.0
    """Per-call timeout (connect, read, write)."""


@dataclass
class RateWindow:
    """The vendor's rate-limit window as its last answer told it; shared by every client
    of one provider, so a fresh client does not forget that no calls are left."""

    remaining: int | None = None
    """Calls left in the window."""
    reset_at: float | None = None
    """When the window resets (seconds since the epoch)."""


class CloudApi:
    """An async JSON client for one vendor (``vendor`` names it in error messages)."""

    def __init__(
        self,
        *,
        vendor: str,
        base_url: str,
        token: str | None,
        policy: RetryPolicy | None = None,
        window: RateWindow | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        verify: ssl.SSLContext | bool = True,
        tls_hint: str | None = None,
    ) -> None:
        self.vendor = vendor
        self.tls_hint = tls_hint
        """The fix for a server certificate that does not verify (what gives the CA)."""
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        # No token: the TLS client certificate in ``verify`` authenticates (Kubernetes).
        headers = {"accept": "application/json"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=self.policy.timeout_s,
            verify=default_tls() if verify is True else verify,
        )  # fmt: skip
        self.window = window or RateWindow()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content_type: str | None = None,
    ) -> ApiResponse:
        """One call with retries; a :class:`CloudApiError` subclass when it fails
        (``content_type`` overrides JSON's, e.g. a Kubernetes merge patch)."""
        method = method.upper()
        retry_failures = method in IDEMPOTENT
        what = f"{self.vendor} {method} {path}"
        for attempt in range(self.policy.attempts):
            last = attempt == self.policy.attempts - 1
            await self._wait_for_window()
            try:
                headers = {"content-type": content_type} if content_type else None
                response = await self._client.request(
                    method, path, params=params, json=json, headers=headers
                )
            except httpx.TransportError as exc:
                untrusted = "CERTIFICATE_VERIFY_FAILED" in str(exc)  # retrying cannot help
                if not retry_failures or last or untrusted:
                    hint = f"check the network and the {self.vendor} status page"
                    if untrusted:
                        hint = self.tls_hint or "the server's TLS certificate is not trusted"
                    raise CloudServerError(
                        f"{what} failed: {type(exc).__name__}: {exc}", hint=hint
                    ) from exc
                await self._sleep(self._backoff(attempt))
                continue
            self._note_window(response.headers)
            status = response.status_code
            if status < 400:
                return ApiResponse(status, _json(response), response.headers)
            if status == 429 and not last:
                await self._sleep(self._retry_after(response.headers, attempt))
                continue
            if status >= 500 and retry_failures and not last:
                await self._sleep(self._backoff(attempt))
                continue
            raise _error(what, response, self.vendor)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int) -> float:
        base = self.policy.backoff_s * (2**attempt)
        return float(min(self.policy.max_wait_s, base * (0.5 + random.random() / 2)))

    def _retry_after(self, headers: Mapping[str, str], attempt: int) -> float:
        value = headers.get("retry-after")
        if value is not None:
            try:
                return min(self.policy.max_wait_s, max(0.0, float(value)))
            except ValueError:
                pass
        if self.window.reset_at is not None:
            return min(self.policy.max_wait_s, max(0.0, self.window.reset_at - time.time()))
        return self._backoff(attempt)

    def _note_window(self, headers: Mapping[str, str]) -> None:
        try:
            remaining = headers.get("ratelimit-remaining")
            reset = headers.get("ratelimit-reset")
            self.window.remaining = int(remaining) if remaining is not None else None
            self.window.reset_at = float(reset) if reset is not None else None
        except ValueError:
            self.window.remaining = self.window.reset_at = None

    async def _wait_for_window(self) -> None:
        # The last answer said no calls are left: wait for the reset rather than earn a 429.
        window = self.window
        if window.remaining is None or window.remaining > 0 or window.reset_at is None:
            return
        wait = window.reset_at - time.time()
        window.remaining = None
        if wait > 0:
            await self._sleep(min(self.policy.max_wait_s, wait))


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _error(what: str, response: httpx.Response, vendor: str) -> CloudApiError:
    status = response.status_code
    body = _json(response)
    detail = ""
    if isinstance(body, dict):
        found = body.get("message") or body.get("detail") or body.get("error") or ""
        detail = str(found)[:300]
    message = f"{what}: HTTP {status}{': ' + detail if detail else ''}"
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = CloudRateLimited if status == 429 else (
            CloudServerError if status >= 500 else CloudApiError)  # fmt: skip
    hints = {
        CloudAuthError: f"check the {vendor} API token (it may be missing, wrong or expired)",
        CloudRateLimited: f"the {vendor} rate limit held after retries: try again later",
        CloudServerError: f"{vendor} failed on its side: try again, or see its status page",
    }
    return cls(message, hint=hints.get(cls), status=status)


M = TypeVar("M", bound=BaseModel)


class VendorApi:
    """The base of one vendor's typed client: a :class:`CloudApi` named for the vendor
    (``self.api``), and answers read through pydantic models (:meth:`parse`)."""

    vendor: ClassVar[str]
    """The vendor's name in error messages."""
    default_url: ClassVar[str]
    """The vendor's API, when no ``base_url`` is given."""

    def __init__(
        self, *, token: str, base_url: str | None = None, policy: RetryPolicy,
        window: RateWindow,
    ) -> None:  # fmt: skip
        self.api = CloudApi(vendor=self.vendor, base_url=base_url or self.default_url,
                            token=token, policy=policy, window=window)  # fmt: skip

    async def aclose(self) -> None:
        """Close the client."""
        await self.api.aclose()

    def parse(self, model: type[M], body: Any, what: str) -> M:
        """``body`` as a ``model``; a body that is not one is a :class:`CloudApiError`
        naming the call (``what``) and the first problem."""
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise CloudApiError(
                f"{self.vendor} answered {what} with an unexpected body: {exc.error_count()} "
                f"problem(s), first: {first['loc']}: {first['msg']}",
                hint="the API may have changed; report it with the hal version",
            ) from exc
