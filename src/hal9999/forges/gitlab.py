"""GitLab (gitlab.com or self-hosted) over its REST API v4."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from hal9999.forges.base import Comment, Issue, IssueRef, Repository
from hal9999.forges.http import ForgeHttp
from hal9999.forges.settings import Forge


def _private_token(token: str) -> tuple[str, str]:
    return "private-token", token


def _username(user: Any) -> str:
    return str(user.get("username") or "unknown") if isinstance(user, dict) else "unknown"


class GitLabClient:
    """:class:`hal9999.forges.base.ForgeClient` for GitLab."""

    def __init__(self, forge: Forge, environ: Mapping[str, str]) -> None:
        self.http = ForgeHttp(forge, environ, auth_header=_private_token)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def issue(self, ref: IssueRef) -> Issue:
        """``GET /projects/:id/issues/:iid`` and its ``/notes`` (system notes left out:
        they are GitLab's own records of changes, not what people wrote)."""
        base = f"/projects/{quote(ref.project, safe='')}/issues/{ref.number}"
        data = self.http.get(base, f"issue {ref}")
        notes = self.http.pages(
            f"{base}/notes", f"the notes of {ref}", {"sort": "asc", "order_by": "created_at"}
        )
        comments = tuple(
            Comment(_username(n.get("author")), str(n.get("body") or ""),
                    str(n.get("created_at", "")))
            for n in notes
            if isinstance(n, dict) and not n.get("system")
        )  # fmt: skip
        return Issue(
            ref=ref,
            title=str(data.get("title") or ""),
            body=str(data.get("description") or ""),
            author=_username(data.get("author")),
            url=str(data.get("web_url") or f"{ref.forge.base_url}/{ref.project}/-/issues/"
                    f"{ref.number}"),
            comments=comments,
        )  # fmt: skip

    def repository(self, ref: IssueRef) -> Repository:
        """``GET /projects/:id``."""
        data = self.http.get(f"/projects/{quote(ref.project, safe='')}", f"project {ref.project}")
        return Repository(
            clone_url=str(
                data.get("http_url_to_repo") or f"{ref.forge.base_url}/{ref.project}.git"
            ),
            default_branch=data.get("default_branch") or None,
            private=data.get("visibility") != "public",
        )
