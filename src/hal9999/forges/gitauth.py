"""The forge token for host git: how a clone (and later a push) of a forge's repository
authenticates without the token ever in a URL, argv, the checkout's config or a sandbox."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import urlsplit

from hal9999.config import HalConfig
from hal9999.forges.settings import KINDS, forge_settings

_USER = {"github": "x-access-token", "gitlab": "oauth2"}
"""The user name each forge's git over HTTPS takes with a token as the password."""


def git_auth_env(url: str, config: HalConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """``GIT_CONFIG_*`` variables that give host git the token of the configured forge
    serving ``url`` (an ``http.<forge>/.extraHeader``, scoped to that forge's address), or
    none when no forge serves it or no token is set. Only for host git: the variables go in
    its environment (readable by this user alone), never in a file or argv."""
    parts = urlsplit(url)
    for kind in KINDS:
        forge = forge_settings(config, kind)
        base = urlsplit(forge.base_url)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            continue
        token = forge.token(environ)
        if token is None:
            return {}
        basic = base64.b64encode(f"{_USER[kind]}:{token[1]}".encode()).decode()
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{forge.base_url}/.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }
    return {}
