"""The forge port: what hal reads from (and later writes to) GitHub or GitLab, as one small
protocol each forge's client implements, and the issue reference a user gives.

A client runs on the host only, with the token of the host's environment; nothing of it
reaches a sandbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from hal9999.config import HalConfig
from hal9999.errors import UsageError
from hal9999.forges.settings import KINDS, Forge, ForgeKind, forge_settings

_PROJECT = r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+"
_SHORT = re.compile(rf"^(github|gitlab):({_PROJECT})#([0-9]{{1,12}})$")
_FORMS = "github:OWNER/REPO#N, gitlab:GROUP/PROJECT#N, or the issue's https:// address"


@dataclass(frozen=True)
class IssueRef:
    """One issue of one forge: ``github:OWNER/REPO#N`` or ``gitlab:GROUP/PROJECT#N``."""

    forge: Forge
    project: str
    """``OWNER/REPO`` on GitHub; ``GROUP/[SUBGROUP/...]PROJECT`` on GitLab."""
    number: int
    """The issue's number in its project (GitLab's ``iid``)."""

    def __str__(self) -> str:
        return f"{self.forge.kind}:{self.project}#{self.number}"


@dataclass(frozen=True)
class Comment:
    """One comment of an issue, as written (untrusted text)."""

    author: str
    body: str
    created_at: str


@dataclass(frozen=True)
class Issue:
    """An issue's text, comments and where it lives, as the forge gives them."""

    ref: IssueRef
    title: str
    body: str
    author: str
    url: str
    """The issue's web address."""
    comments: tuple[Comment, ...]


@dataclass(frozen=True)
class Repository:
    """The repository an issue belongs to."""

    clone_url: str
    """Its https:// clone address (never carrying a credential)."""
    default_branch: str | None
    """The branch a task starts from when no ``--ref`` is given (None: an empty one)."""
    private: bool


class ForgeClient(Protocol):
    """One forge's REST API, as hal uses it."""

    def issue(self, ref: IssueRef) -> Issue:
        """The issue ``ref`` with its comments, oldest first."""
        ...

    def repository(self, ref: IssueRef) -> Repository:
        """The repository of ``ref``."""
        ...

    def close(self) -> None:
        """Close the client's connections."""
        ...


def parse_issue_ref(text: str, config: HalConfig) -> IssueRef:
    """``text`` (``github:OWNER/REPO#N``, ``gitlab:GROUP/PROJECT#N`` or an issue's web
    address on a configured forge) as a reference; a :class:`UsageError` naming the forms
    otherwise."""
    text = text.strip()
    short = _SHORT.match(text)
    if short:
        kind: ForgeKind = "github" if short.group(1) == "github" else "gitlab"
        return _ref(forge_settings(config, kind), short.group(2), short.group(3))
    if text.startswith(("https://", "http://")):
        found = _from_url(text, config)
        if found is not None:
            return found
    raise UsageError(f"--issue {text[:200]!r} is not an issue reference", hint=f"pass {_FORMS}")


def _ref(forge: Forge, project: str, number: str) -> IssueRef:
    if any(part in (".", "..") for part in project.split("/")) or int(number) < 1:
        raise UsageError(f"--issue names no issue: {project}#{number}", hint=f"pass {_FORMS}")
    if forge.kind == "github" and project.count("/") != 1:
        raise UsageError(
            f"--issue github:{project} is not OWNER/REPO", hint="pass github:OWNER/REPO#N"
        )
    return IssueRef(forge, project, int(number))


def _from_url(text: str, config: HalConfig) -> IssueRef | None:
    parts = urlsplit(text)
    for kind in KINDS:
        forge = forge_settings(config, kind)
        base = urlsplit(forge.base_url)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            continue
        path = parts.path[len(base.path) :] if parts.path.startswith(base.path) else None
        if path is None:
            continue
        tail = r"/-/issues/([0-9]{1,12})/?$" if kind == "gitlab" else r"/issues/([0-9]{1,12})/?$"
        found = re.match(rf"^/({_PROJECT}){tail}", path)
        if found:
            return _ref(forge, found.group(1), found.group(2))
    return None
