"""A run request made to work on an issue (``hal run --issue``), where it is executed: the
issue read from its forge on the host, with this process's forge tokens."""

from __future__ import annotations

from collections.abc import Mapping

from hal9999.config import HalConfig
from hal9999.errors import UsageError
from hal9999.events.models import IssueFetched
from hal9999.tasks.request import RunRequest


def with_issue(
    req: RunRequest, config: HalConfig, environ: Mapping[str, str]
) -> tuple[RunRequest, IssueFetched]:
    """``req`` working on its issue: the prompt made of it (the request's own prompt as
    added instructions), its repository at ``--ref`` or the default branch, and ``issue``
    the issue's address; with the event that records it. ``config`` is the service's (the
    request's own, when it carries one, applies)."""
    from hal9999.forges.issues import fetch_issue_work  # httpx, for an issue's run only

    if req.repo is not None:
        raise UsageError(
            "--issue and --repo both name the repository",
            hint="leave --repo out: the issue's repository is cloned",
        )
    work = fetch_issue_work(str(req.issue), req.prompt, req.config or config, environ)
    issue = work.issue
    changed = {
        "prompt": work.prompt,
        "repo": work.repository.clone_url,
        "ref": req.ref or work.repository.default_branch,
        "issue": issue.url,
    }
    fetched = IssueFetched(issue=str(issue.ref), url=issue.url, comments=len(issue.comments))
    return req.model_copy(update=changed), fetched
