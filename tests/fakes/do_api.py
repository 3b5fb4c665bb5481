"""An in-process fake of DigitalOcean's v2 droplet API, whose droplets are real sshds.

It follows the published API (https://docs.digitalocean.com/reference/api/ and the OpenAPI
spec vendored under tests/fakes/schemas/, which the tests check its answers against):

    POST   /v2/droplets                 202 {"droplet": {... "status": "new"}, "links": {...}}
    GET    /v2/droplets/{id}            200 {"droplet": {...}} | 404
    GET    /v2/droplets?tag_name=&page=&per_page=   200 {"droplets", "links": {"pages"}, "meta"}
    DELETE /v2/droplets/{id}            204 | 404
    DELETE /v2/droplets?tag_name=T      204

Bearer auth (401 ``Unauthorized`` otherwise), errors as ``{"id", "message"}``, and
``ratelimit-limit``/``-remaining``/``-reset`` headers on every answer (429
``too_many_requests`` when the window is spent, with ``retry-after``).

Booting is real enough: a new droplet takes a free machine from ``machines`` (a test sshd,
tests/sshd.py), applies the ``ssh_keys`` of its cloud-init user data as that sshd's host key
(as cloud-init's cc_ssh would) and restarts it; only then is it ``active`` with the sshd's
address. The server, the token check and the injected faults (``stuck``: droplets stay
``new``) are tests/fakes/vendor_api.py's; :meth:`FakeDigitalOcean.exhaust_window` spends
the rate-limit window.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from tests.fakes.sshd_reload import reload_sshd
from tests.fakes.vendor_api import Answer, FakeVendorApi
from tests.sshd import Sshd

TOKEN = "dop_v1_fake_test_token"


@dataclass
class FakeDroplet:
    """The fake's state of one droplet."""

    id: int
    body: dict[str, Any]
    status: str = "new"
    machine: Sshd | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"))  # fmt: skip


class FakeDigitalOcean(FakeVendorApi[FakeDroplet]):
    """The fake API server; use as a context manager (``url`` once started)."""

    token = TOKEN
    fault_prefix = "/v2/"

    def __init__(self, machines: list[Sshd], *, boot_s: float = 0.1, limit: int = 5000) -> None:
        super().__init__(boot_s=boot_s)
        self.machines = machines
        self.limit = limit
        self.remaining = limit
        self.reset_at = time.time() + 3600
        self.droplets: dict[int, FakeDroplet] = {}
        self._next_id = 3164444

    def _registry(self) -> dict[int, FakeDroplet]:
        return self.droplets

    def error(self, status: int) -> dict[str, str]:
        """DigitalOcean's error body: ``{"id", "message"}``."""
        return _error(status)

    def answer_headers(self) -> dict[str, str]:
        """DigitalOcean labels every answer JSON (the empty 204s included) and counts the
        rate-limit window on it."""
        return {"content-type": "application/json; charset=utf-8",
                "ratelimit-limit": str(self.limit),
                "ratelimit-remaining": str(max(0, self.remaining)),
                "ratelimit-reset": str(int(self.reset_at))}  # fmt: skip

    def exhaust_window(self, reset_in_s: float) -> None:
        """No calls left until ``reset_in_s`` from now (the next call gets a 429)."""
        with self.lock:
            self.remaining = 0
            # The header carries whole epoch seconds: the window resets on one.
            self.reset_at = float(math.ceil(time.time() + reset_in_s))

    # -- the API ------------------------------------------------------------------------

    def _admit(self) -> Answer | None:
        if self.remaining <= 0 and time.time() >= self.reset_at:
            self.remaining, self.reset_at = self.limit, time.time() + 3600
        if self.remaining <= 0:
            wait = max(1, int(self.reset_at - time.time() + 0.999))
            return 429, _error(429), {"retry-after": str(wait)}
        self.remaining -= 1
        return None

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Answer:
        parts = path.strip("/").split("/")
        if parts[:2] != ["v2", "droplets"] or len(parts) > 3:
            return 404, _error(404), {}
        if len(parts) == 3:
            if not parts[2].isdigit():
                return 404, _error(404), {}
            found = self.droplets.get(int(parts[2]))
            if found is None:
                return 404, _error(404), {}
            if method == "GET":
                return 200, {"droplet": self._view(found)}, {}
            if method == "DELETE":
                self.droplets.pop(found.id, None)
                return 204, None, {}
            return 405, _error(405), {}
        if method == "POST":
            return self._create(body)
        tag = (query.get("tag_name") or [None])[0]
        if method == "DELETE":
            if tag is None:
                return 422, {"id": "unprocessable_entity", "message": "tag_name is required"}, {}
            for droplet in [d for d in self.droplets.values() if tag in d.body["tags"]]:
                self.droplets.pop(droplet.id, None)
            return 204, None, {}
        if method == "GET":
            return 200, self._page(path, query, tag), {}
        return 405, _error(405), {}

    def _create(self, body: Any) -> Answer:
        if not isinstance(body, dict) or not body.get("name") or not body.get("image"):
            return 422, {"id": "unprocessable_entity", "message": "name and image are required"}, {}
        for key in ("region", "size"):
            if not isinstance(body.get(key), str):
                return 422, {"id": "unprocessable_entity", "message": f"{key} is invalid"}, {}
        self._next_id += 1
        droplet = FakeDroplet(self._next_id, {**body, "tags": list(body.get("tags") or [])})
        self.droplets[droplet.id] = droplet
        threading.Thread(target=self._boot, args=(droplet,), daemon=True).start()
        action = {"id": droplet.id * 10, "rel": "create",
                  "href": f"{self.url}/v2/actions/{droplet.id * 10}"}  # fmt: skip
        return 202, {"droplet": self._view(droplet), "links": {"actions": [action]}}, {}

    def _page(self, path: str, query: dict[str, list[str]], tag: str | None) -> dict[str, Any]:
        page = int((query.get("page") or ["1"])[0])
        per_page = min(200, int((query.get("per_page") or ["20"])[0]))
        chosen = [d for d in sorted(self.droplets.values(), key=lambda d: d.id)
                  if tag is None or tag in d.body["tags"]]  # fmt: skip
        last = max(1, -(-len(chosen) // per_page))
        items = chosen[(page - 1) * per_page : page * per_page]

        def link(number: int) -> str:
            params = {"page": number, "per_page": per_page} | ({"tag_name": tag} if tag else {})
            return f"{self.url}{path}?{urlencode(params)}"

        pages: dict[str, str] = {}
        if page > 1:
            pages |= {"first": link(1), "prev": link(page - 1)}
        if page < last:
            pages |= {"next": link(page + 1), "last": link(last)}
        return {"droplets": [self._view(d) for d in items], "links": {"pages": pages},
                "meta": {"total": len(chosen)}}  # fmt: skip

    def _view(self, droplet: FakeDroplet) -> dict[str, Any]:
        body = droplet.body
        image = body["image"]
        region = {"name": "Fake Region 3", "slug": body["region"], "features": ["metadata"],
                  "available": True, "sizes": [body["size"]]}  # fmt: skip
        v4 = []
        if droplet.status == "active" and droplet.machine is not None:
            v4 = [{"ip_address": droplet.machine.address, "netmask": "255.255.255.252",
                   "gateway": droplet.machine.address, "type": "public"}]  # fmt: skip
        return {
            "id": droplet.id, "name": body["name"], "memory": 4096, "vcpus": 2, "disk": 80,
            "disk_info": [{"type": "local", "size": {"amount": 80, "unit": "gib"}}],
            "locked": False, "status": droplet.status, "kernel": None,
            "created_at": droplet.created_at, "features": ["droplet_agent"],
            "backup_ids": [], "next_backup_window": None, "snapshot_ids": [],
            "image": {"id": image if isinstance(image, int) else 1, "name": "hal golden",
                      "type": "snapshot", "distribution": "Debian", "public": False,
                      "regions": [body["region"]], "created_at": droplet.created_at,
                      "min_disk_size": 25, "size_gigabytes": 2.4, "status": "available"},
            "volume_ids": [],
            "size": {"slug": body["size"], "memory": 4096, "vcpus": 2, "disk": 80,
                     "transfer": 4.0, "price_monthly": 24.0, "price_hourly": 0.03571,
                     "regions": [body["region"]], "available": True,
                     "description": "Basic"},
            "size_slug": body["size"],
            "networks": {"v4": v4, "v6": []},
            "region": region, "tags": body["tags"],
            "vpc_uuid": "5a4981aa-0000-4000-8000-fa4e5ea00000",
        }  # fmt: skip

    # -- booting --------------------------------------------------------------------------

    def _boot(self, droplet: FakeDroplet) -> None:
        time.sleep(self.boot_s)
        while True:
            with self.lock:
                if droplet.id not in self.droplets:
                    return
                busy = {id(d.machine) for d in self.droplets.values() if d.machine}
                free = [m for m in self.machines if id(m) not in busy]
                if free and not self.stuck:
                    droplet.machine = free[0]
                    break
            time.sleep(0.05)
        _apply_cloud_init(droplet.body.get("user_data") or "", droplet.machine)
        with self.lock:
            if droplet.id in self.droplets:
                droplet.status = "active"


def _apply_cloud_init(user_data: str, machine: Sshd) -> None:
    # cloud-init's cc_ssh: the given host keys replace the machine's. The user data is
    # "#cloud-config" then YAML; hal writes JSON, a subset of YAML this fake can read.
    head, _, rest = user_data.partition("\n")
    if head.strip() != "#cloud-config":
        return
    config = json.loads(rest) or {}
    for item in config.get("write_files") or []:
        # The login user's authorized_keys: this sshd reads them from its own file.
        if str(item.get("path", "")).endswith("/.ssh/authorized_keys"):
            with (machine.host_key_file.parent / "authorized_keys").open("a") as out:
                out.write(item.get("content", ""))
    keys = config.get("ssh_keys") or {}
    private = keys.get("ed25519_private")
    if not private:
        return
    fd = os.open(machine.host_key_file, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(private)
    reload_sshd(machine.proc.pid)  # it re-executes itself, with the new key


_MESSAGES = {
    401: ("Unauthorized", "Unable to authenticate you."),
    404: ("not_found", "The resource you were accessing could not be found."),
    405: ("method_not_allowed", "Method not allowed."),
    429: ("too_many_requests", "API Rate limit exceeded."),
    500: ("server_error", "Unexpected server-side error"),
    503: ("service_unavailable", "The service is temporarily unavailable."),
}


def _error(status: int) -> dict[str, str]:
    error_id, message = _MESSAGES.get(status, ("error", "Something went wrong."))
    return {"id": error_id, "message": message}
