"""The HTTP side every forge client shares: one JSON GET with the token, the forge's rate
limits waited out or reported, ``Link`` pagination, and failures mapped to hal's error tree
at this boundary::

    401                       -> ForgeAuthError (the token is refused)
    404 (and 403 otherwise)   -> ForgeNotFound / ForgeAuthError, saying whether a token was sent
    403/429 with a rate limit -> waited for up to ``rate_limit_wait_s``, else ForgeRateLimited
    transport failure, 5xx    -> ForgeUnreachable

The token goes only into a request header; no message or hint ever holds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx

from hal9999.errors import (
    ForgeAuthError,
    ForgeError,
    ForgeNotFound,
    ForgeRateLimited,
    ForgeUnreachable,
)
from hal9999.forges.settings import Forge
from hal9999.providers.cloud.api import default_tls

MAX_PAGES = 50
"""Pages of one listing read at most (an issue with thousands of comments is cut there)."""
_ATTEMPTS = 4


class ForgeHttp:
    """A JSON client of one forge's REST API, with the host's token when one is set."""

    def __init__(
        self,
        forge: Forge,
        environ: Mapping[str, str],
        *,
        auth_header: Callable[[str], tuple[str, str]],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.forge = forge
        token = forge.token(environ)
        self.token_env = token[0] if token else None
        """The variable the token came from (None: no token; public data only)."""
        headers = {"accept": "application/json", "user-agent": "hal9999"}
        if token is not None:
            name, value = auth_header(token[1])
            headers[name] = value
        # The proxy and CA variables apply, as to every HTTP client of hal's.
        self._client = httpx.Client(
            base_url=forge.api_url, headers=headers, timeout=forge.timeout_s,
            verify=default_tls(),
        )  # fmt: skip
        self._sleep = sleep

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> ForgeHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, what: str, params: Mapping[str, Any] | None = None) -> Any:
        """The JSON of ``GET path`` (``what`` names it in errors)."""
        return _json(self._get(path, what, params), what)

    def pages(self, path: str, what: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Each item of a paginated listing, following ``Link: <...>; rel="next"``."""
        url: str | None = path
        query: Mapping[str, Any] | None = {**(params or {}), "per_page": 100}
        for _ in range(MAX_PAGES):
            if url is None:
                return
            response = self._get(url, what, query)
            items = _json(response, what)
            if not isinstance(items, list):
                raise ForgeError(
                    f"{self.forge.kind} answered {what} with no list",
                    hint="the forge's API may differ from what hal expects; report it",
                )
            yield from items
            url, query = response.links.get("next", {}).get("url"), None
            if url is not None and not url.startswith(self.forge.api_url + "/"):
                # The token goes only to the forge's own API, whatever a header says.
                raise ForgeError(
                    f"{self.forge.kind} paginated {what} away from {self.forge.api_url}",
                    hint=f"check [forges.{self.forge.kind}] api_url: the forge's own address",
                )

    def _get(self, path: str, what: str, params: Mapping[str, Any] | None) -> httpx.Response:
        kind = self.forge.kind
        for attempt in range(_ATTEMPTS):
            try:
                response = self._client.get(path, params=params)
            except httpx.TransportError as exc:
                raise ForgeUnreachable(
                    f"{kind} at {self.forge.api_url} could not be reached for {what}: "
                    f"{type(exc).__name__}",
                    hint=f"check the network, and [forges.{kind}] api_url in the config",
                ) from exc
            status = response.status_code
            if status < 400:
                return response
            wait = _rate_limit_wait(response)
            if wait is not None:
                if wait > self.forge.rate_limit_wait_s or attempt == _ATTEMPTS - 1:
                    until = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + wait))
                    raise ForgeRateLimited(
                        f"{kind} rate limit reached reading {what} (lifts at {until})",
                        hint="try again then"
                        + ("" if self.token_env else f", or set {self.forge.token_env[0]}"),
                    )
                self._sleep(wait)
                continue
            raise self._refused(status, what)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _refused(self, status: int, what: str) -> ForgeError:
        kind, names = self.forge.kind, " or ".join(self.forge.token_env)
        if status == 401:
            return ForgeAuthError(
                f"{kind} refused the token in {self.token_env or names} reading {what}",
                hint=f"set {self.token_env or names} to a valid token that can read it",
            )
        if status in (403, 404):
            if self.token_env is None:
                return ForgeNotFound(
                    f"{kind} has no {what} that hal may read without a token",
                    hint=f"check the reference; for a private repository set {names}",
                )
            cls = ForgeNotFound if status == 404 else ForgeAuthError
            return cls(
                f"{kind} has no {what} the token in {self.token_env} may read",
                hint="check the reference, and that the token can read the repository",
            )
        if status >= 500:
            return ForgeUnreachable(
                f"{kind} failed reading {what}: HTTP {status}",
                hint="try again later, or see the forge's status page",
            )
        return ForgeError(
            f"{kind} refused reading {what}: HTTP {status}",
            hint="check the reference and the token",
        )


def _rate_limit_wait(response: httpx.Response) -> float | None:
    """Seconds until a rate limit that refused ``response`` lifts (None: no rate limit).

    GitHub answers 403 or 429: a primary limit with ``x-ratelimit-remaining: 0`` and
    ``x-ratelimit-reset`` (epoch seconds), a secondary one with ``retry-after``. GitLab
    answers 429 with ``retry-after`` and ``ratelimit-reset``."""
    if response.status_code not in (403, 429):
        return None
    headers = response.headers
    after = headers.get("retry-after")
    if after is not None and after.strip().isdigit():
        return float(after)
    remaining = headers.get("x-ratelimit-remaining", headers.get("ratelimit-remaining"))
    reset = headers.get("x-ratelimit-reset", headers.get("ratelimit-reset"))
    if (remaining == "0" or response.status_code == 429) and reset and reset.strip().isdigit():
        return max(0.0, float(reset) - time.time())
    return 60.0 if response.status_code == 429 else None


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ForgeError(
            f"the forge answered {what} with no JSON",
            hint="check [forges.*] api_url: it must be the REST API's address",
        ) from exc
