"""The part of DigitalOcean's v2 API the ``digitalocean`` provider uses, over :mod:`.api`.

Endpoints (https://docs.digitalocean.com/reference/api/): ``POST /v2/droplets``,
``GET /v2/droplets/{id}``, ``GET /v2/droplets?tag_name=T`` (paged: ``links.pages.next``),
``DELETE /v2/droplets?tag_name=T``. Answers are validated by the pydantic models below (the
fields hal reads; the vendor's schema has many more, which are ignored).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from hal9999.providers.cloud.api import VendorApi

API_URL = "https://api.digitalocean.com"
PER_PAGE = 200  # the API's maximum page size


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


class DigitalOceanApi(VendorApi):
    """Droplet calls, each validated; errors are :class:`CloudApiError` subclasses."""

    vendor = "DigitalOcean"
    default_url = API_URL

    async def create_droplet(self, body: dict[str, Any]) -> Droplet:
        """``POST /v2/droplets`` (one droplet)."""
        answer = await self.api.request("POST", "/v2/droplets", json=body)
        return self.parse(_One, answer.body, "create droplet").droplet

    async def get_droplet(self, droplet_id: int) -> Droplet:
        """``GET /v2/droplets/{id}``; :class:`CloudNotFound` when gone."""
        answer = await self.api.request("GET", f"/v2/droplets/{droplet_id}")
        return self.parse(_One, answer.body, "get droplet").droplet

    async def droplets_tagged(self, tag: str) -> list[Droplet]:
        """Every droplet with ``tag``, following the pages."""
        found: list[Droplet] = []
        page = 1
        while True:
            answer = await self.api.request(
                "GET", "/v2/droplets", params={"tag_name": tag, "per_page": PER_PAGE, "page": page}
            )
            many = self.parse(_Many, answer.body, "list droplets")
            found.extend(many.droplets)
            pages = many.links.pages
            if pages is None or not pages.next or not many.droplets:
                return found
            page += 1

    async def delete_tagged(self, tag: str) -> None:
        """``DELETE /v2/droplets?tag_name=T``: every droplet with the tag goes."""
        await self.api.request("DELETE", "/v2/droplets", params={"tag_name": tag})
