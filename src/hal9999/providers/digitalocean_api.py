"""The part of DigitalOcean's v2 API the ``digitalocean`` provider uses, over :mod:`cloudapi`.

Endpoints (https://docs.digitalocean.com/reference/api/): ``POST /v2/droplets``,
``GET /v2/droplets/{id}``, ``GET /v2/droplets?tag_name=T`` (paged: ``links.pages.next``),
``DELETE /v2/droplets?tag_name=T``. Answers are validated by the pydantic models below (the
fields hal reads; the vendor's schema has many more, which are ignored).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from hal9999.errors import CloudApiError
from hal9999.providers.cloudapi import CloudApi, RateWindow, RetryPolicy

API_URL = "https://api.digitalocean.com"
PER_PAGE = 200  # the API's maximum page size
M = TypeVar("M", bound=BaseModel)


class NetworkV4(BaseModel):
    """One IPv4 address of a droplet."""

    model_config = ConfigDict(extra="ignore")

    ip_address: str
    """The address."""
    type: str
    """``public`` or ``private``."""


class Networks(BaseModel):
    """A droplet's addresses."""

    model_config = ConfigDict(extra="ignore")

    v4: list[NetworkV4] = []
    """IPv4 addresses (empty until the droplet has booted far enough)."""


class Droplet(BaseModel):
    """A droplet as the API describes it (the fields hal reads)."""

    model_config = ConfigDict(extra="ignore")

    id: int
    """The droplet's id."""
    name: str
    """Its name (``hal-<sandbox id>``)."""
    status: str
    """``new``, ``active``, ``off`` or ``archive``."""
    tags: list[str] = []
    """Its tags (``hal9999`` and ``hal9999-<sandbox id>`` for hal's)."""
    networks: Networks = Networks()
    """Its addresses."""

    def public_ipv4(self) -> str | None:
        """The public IPv4 address, once assigned."""
        for net in self.networks.v4:
            if net.type == "public":
                return net.ip_address
        return None


class _One(BaseModel):
    model_config = ConfigDict(extra="ignore")
    droplet: Droplet


class _Pages(BaseModel):
    model_config = ConfigDict(extra="ignore")
    next: str | None = None


class _Links(BaseModel):
    model_config = ConfigDict(extra="ignore")
    pages: _Pages | None = None


class _Many(BaseModel):
    model_config = ConfigDict(extra="ignore")
    droplets: list[Droplet]
    links: _Links = _Links()


class DigitalOceanApi:
    """Droplet calls, each validated; errors are :class:`CloudApiError` subclasses."""

    def __init__(
        self, *, token: str, base_url: str = API_URL, policy: RetryPolicy, window: RateWindow
    ) -> None:
        self.api = CloudApi(vendor="DigitalOcean", base_url=base_url, token=token,
                            policy=policy, window=window)  # fmt: skip

    async def aclose(self) -> None:
        """Close the client."""
        await self.api.aclose()

    async def create_droplet(self, body: dict[str, Any]) -> Droplet:
        """``POST /v2/droplets`` (one droplet)."""
        answer = await self.api.request("POST", "/v2/droplets", json=body)
        return _parse(_One, answer.body, "create droplet").droplet

    async def get_droplet(self, droplet_id: int) -> Droplet:
        """``GET /v2/droplets/{id}``; :class:`CloudNotFound` when gone."""
        answer = await self.api.request("GET", f"/v2/droplets/{droplet_id}")
        return _parse(_One, answer.body, "get droplet").droplet

    async def droplets_tagged(self, tag: str) -> list[Droplet]:
        """Every droplet with ``tag``, following the pages."""
        found: list[Droplet] = []
        page = 1
        while True:
            answer = await self.api.request(
                "GET", "/v2/droplets", params={"tag_name": tag, "per_page": PER_PAGE, "page": page}
            )
            many = _parse(_Many, answer.body, "list droplets")
            found.extend(many.droplets)
            pages = many.links.pages
            if pages is None or not pages.next or not many.droplets:
                return found
            page += 1

    async def delete_tagged(self, tag: str) -> None:
        """``DELETE /v2/droplets?tag_name=T``: every droplet with the tag goes."""
        await self.api.request("DELETE", "/v2/droplets", params={"tag_name": tag})


def _parse(model: type[M], body: Any, what: str) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise CloudApiError(
            f"DigitalOcean answered {what} with an unexpected body: {exc.error_count()} "
            f"problem(s), first: {exc.errors()[0]['msg']}",
            hint="the API may have changed; report it with the hal version",
        ) from exc
