"""Egress allow-list rules: matching a host, and intersecting two lists (no heavy imports:
the config's trust check uses it at CLI start-up).

An entry is ``host`` (port 443), ``host:port``, ``*.domain`` (any subdomain, port 443),
``*.domain:port`` or an IPv6 address in brackets (``[2001:db8::1]``, ``[2001:db8::1]:8443``;
matched in any spelling of the address). A task's own list, or an untrusted project's, may
only *narrow* what the user's config allows: :func:`intersect` keeps exactly the hosts both
lists allow.
"""

from __future__ import annotations

from collections.abc import Iterable


def allowed(host: str, port: int, rules: Iterable[str]) -> bool:
    """Whether ``host:port`` matches an allow-list entry."""
    host = _canonical(host.lower().rstrip("."))
    for rule in rules:
        name, want = _split(rule)
        if port != want:
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]) and host != name[2:]:
                return True
        elif host == name:
            return True
    return False


def intersect(rules: Iterable[str], within: Iterable[str]) -> list[str]:
    """The entries that allow exactly the hosts both ``rules`` and ``within`` allow: each
    entry of one list that the other covers (a host it matches, or a wildcard at or under
    one of its wildcards), in order, without repeats."""
    left, right = list(rules), list(within)
    kept: list[str] = []
    both = [*(r for r in left if _covered(r, right)), *(r for r in right if _covered(r, left))]
    for entry in both:
        if _split(entry) not in (_split(k) for k in kept):  # one host in two spellings: once
            kept.append(entry)
    return kept


def _covered(entry: str, rules: list[str]) -> bool:
    name, port = _split(entry)
    if not name.startswith("*."):
        return allowed(name, port, rules)
    # A wildcard is covered by a wildcard of the same port over the same or a parent domain.
    for rule in rules:
        other, other_port = _split(rule)
        if (
            other_port == port
            and other.startswith("*.")
            and (name == other or name.endswith(other[1:]))
        ):
            return True
    return False


def _split(rule: str) -> tuple[str, int]:
    if rule.startswith("["):  # [IPv6]:port
        address, _, port = rule[1:].lower().partition("]")
        port = port.removeprefix(":")
        return _canonical(address), int(port) if port.isdigit() else 443
    name, _, port = rule.lower().partition(":")
    return name.rstrip("."), int(port) if port.isdigit() else 443


def _canonical(host: str) -> str:
    """An IPv6 address in its one spelling (``fd42:0::02`` is ``fd42::2``); a name as it is."""
    if ":" not in host:
        return host
    import ipaddress  # only for an IPv6 entry or target: the CLI's start-up has no need

    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        return host
