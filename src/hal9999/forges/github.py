"""GitHub (and GitHub Enterprise) over its REST API v3."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from hal9999.forges.base import Comment, Issue, IssueRef, Repository
from hal9999.forges.http import ForgeHttp
from hal9999.forges.settings import Forge


def _bearer(token: str) -> tuple[str, str]:
    return "authorization", f"Bearer {token}"


def _login(user: Any) -> str:
    return str(user.get("login") or "unknown") if isinstance(user, dict) else "unknown"


class GitHubClient:
    """:class:`hal9999.forges.base.ForgeClient` for GitHub."""

    def __init__(self, forge: Forge, environ: Mapping[str, str]) -> None:
        self.http = ForgeHttp(forge, environ, auth_header=_bearer)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def issue(self, ref: IssueRef) -> Issue:
        """``GET /repos/{owner}/{repo}/issues/{n}`` and its ``/comments``."""
        base = f"/repos/{_path(ref.project)}/issues/{ref.number}"
        data = self.http.get(base, f"issue {ref}")
        comments = tuple(
            Comment(_login(c.get("user")), str(c.get("body") or ""), str(c.get("created_at", "")))
            for c in self.http.pages(f"{base}/comments", f"the comments of {ref}")
            if isinstance(c, dict)
        )
        return Issue(
            ref=ref,
            title=str(data.get("title") or ""),
            body=str(data.get("body") or ""),
            author=_login(data.get("user")),
            url=str(data.get("html_url") or f"{ref.forge.base_url}/{ref.project}/issues/"
                    f"{ref.number}"),
            comments=comments,
        )  # fmt: skip

    def repository(self, ref: IssueRef) -> Repository:
        """``GET /repos/{owner}/{repo}``."""
        data = self.http.get(f"/repos/{_path(ref.project)}", f"repository {ref.project}")
        return Repository(
            clone_url=str(data.get("clone_url") or f"{ref.forge.base_url}/{ref.project}.git"),
            default_branch=data.get("default_branch") or None,
            private=bool(data.get("private")),
        )


def _path(project: str) -> str:
    return "/".join(quote(part, safe="") for part in project.split("/"))
