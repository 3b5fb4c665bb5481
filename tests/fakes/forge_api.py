"""An in-process fake of GitHub's REST API v3 and GitLab's v4 (the issue side), with real git
over smart HTTP for the clone.

It follows the vendors' published shapes for what hal reads:

- GitHub: ``GET /api/v3/repos/{owner}/{repo}`` (``default_branch``, ``clone_url``,
  ``private``), ``.../issues/{n}`` (``number``, ``title``, ``body``, ``user.login``,
  ``html_url``) and ``.../issues/{n}/comments`` (``user.login``, ``body``, ``created_at``).
- GitLab: ``GET /api/v4/projects/{url-encoded path}`` (``default_branch``,
  ``http_url_to_repo``, ``visibility``), ``.../issues/{iid}`` (``title``, ``description``,
  ``author.username``, ``web_url``) and ``.../issues/{iid}/notes`` (``body``,
  ``author.username``, ``system``).
- git: ``/git/{project}.git/...``, ``git http-backend`` over the bare repository.

Listings are paginated by ``Link: <...>; rel="next"`` (``page_size`` items a page whatever
``per_page`` asks, so a short listing spans pages). GitHub authenticates ``Authorization:
Bearer``, GitLab ``PRIVATE-TOKEN``; a wrong token is 401 with the vendor's body, a private
project without the token is 404 (both vendors hide private projects so). Faults
(:meth:`FakeForge.fail`): any status ``times`` times with any headers (a rate limit's).
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

TOKEN = "ghp_faketoken0123456789abcdefABCDEF012345"
GITLAB_TOKEN = "glpat-faketoken0123456789ab"


@dataclass
class FakeIssue:
    """One issue with its comments ((author, body) pairs, oldest first)."""

    title: str
    body: str
    author: str
    comments: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class FakeFault:
    """An answer given instead of the real one, ``times`` times, to paths with ``prefix``."""

    status: int
    prefix: str
    times: int
    headers: dict[str, str]
    body: Any


class FakeForge:
    """GitHub and GitLab on one loopback server; use as a context manager."""

    def __init__(self, page_size: int = 2) -> None:
        self.page_size = page_size
        self.repos: dict[str, Path] = {}
        """Bare repositories by project path (``owner/repo``, ``group/sub/project``)."""
        self.private: set[str] = set()
        self.issues: dict[tuple[str, int], FakeIssue] = {}
        self.faults: list[FakeFault] = []
        self.seen: list[tuple[str, dict[str, str]]] = []
        """Every request's path and headers."""
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def fail(
        self, status: int, prefix: str = "/api/", times: int = 1,
        headers: dict[str, str] | None = None, body: Any = None,
    ) -> None:  # fmt: skip
        """Answer the next ``times`` requests under ``prefix`` with ``status``."""
        with self.lock:
            self.faults.append(FakeFault(status, prefix, times, headers or {}, body))

    # -- the APIs -------------------------------------------------------------------------

    def answer(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        """One API GET: status, JSON body, extra headers."""
        with self.lock:
            self.seen.append((path, headers))
            for fault in self.faults:
                if fault.times > 0 and path.startswith(fault.prefix):
                    fault.times -= 1
                    return fault.status, fault.body or {"message": "fault"}, fault.headers
        if path.startswith("/api/v3/"):
            return self._github(path[len("/api/v3") :], query, headers)
        if path.startswith("/api/v4/"):
            return self._gitlab(path[len("/api/v4") :], query, headers)
        return 404, {"message": "Not Found"}, {}

    def _github(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        not_found = (404, {"message": "Not Found",
                           "documentation_url": "https://docs.github.com/rest"}, {})  # fmt: skip
        auth = headers.get("authorization")
        if auth is not None and auth != f"Bearer {TOKEN}":
            return 401, {"message": "Bad credentials",
                         "documentation_url": "https://docs.github.com/rest"}, {}  # fmt: skip
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "repos":
            return not_found
        project = f"{parts[1]}/{parts[2]}"
        if project not in self.repos or (project in self.private and auth is None):
            return not_found
        rest = parts[3:]
        if not rest:
            return 200, {
                "id": 1, "name": parts[2], "full_name": project,
                "private": project in self.private, "default_branch": "main",
                "html_url": f"{self.url}/{project}",
                "clone_url": f"{self.url}/git/{project}.git",
            }, {}  # fmt: skip
        if rest[0] != "issues" or len(rest) < 2 or not rest[1].isdigit():
            return not_found
        issue = self.issues.get((project, int(rest[1])))
        if issue is None:
            return not_found
        html = f"{self.url}/{project}/issues/{rest[1]}"
        if len(rest) == 2:
            return 200, {
                "id": 100 + int(rest[1]), "number": int(rest[1]), "title": issue.title,
                "body": issue.body, "user": {"login": issue.author, "type": "User"},
                "state": "open", "html_url": html, "comments": len(issue.comments),
            }, {}  # fmt: skip
        if rest[2:] == ["comments"]:
            items = [
                {"id": i, "user": {"login": who, "type": "User"}, "body": body,
                 "created_at": f"2026-01-0{1 + i % 9}T00:00:00Z",
                 "author_association": "CONTRIBUTOR", "html_url": f"{html}#issuecomment-{i}"}
                for i, (who, body) in enumerate(issue.comments)
            ]  # fmt: skip
            return self._page(f"/api/v3{path}", items, query)
        return not_found

    def _gitlab(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        not_found = (404, {"message": "404 Project Not Found"}, {})
        token = headers.get("private-token")
        if token is not None and token != GITLAB_TOKEN:
            return 401, {"message": "401 Unauthorized"}, {}
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "projects":
            return not_found
        project = unquote(parts[1])
        if project not in self.repos or (project in self.private and token is None):
            return not_found
        rest = parts[2:]
        web = f"{self.url}/{project}"
        if not rest:
            return 200, {
                "id": 7, "path_with_namespace": project, "default_branch": "main",
                "visibility": "private" if project in self.private else "public",
                "web_url": web, "http_url_to_repo": f"{self.url}/git/{project}.git",
            }, {}  # fmt: skip
        if rest[0] != "issues" or len(rest) < 2 or not rest[1].isdigit():
            return not_found
        issue = self.issues.get((project, int(rest[1])))
        if issue is None:
            return 404, {"message": "404 Not found"}, {}
        if len(rest) == 2:
            return 200, {
                "id": 900, "iid": int(rest[1]), "project_id": 7, "title": issue.title,
                "description": issue.body, "state": "opened",
                "author": {"username": issue.author}, "web_url": f"{web}/-/issues/{rest[1]}",
            }, {}  # fmt: skip
        if rest[2:] == ["notes"]:
            items: list[dict[str, Any]] = [
                {"id": 1, "body": "changed the description", "author": {"username": "ghost"},
                 "system": True, "created_at": "2026-01-01T00:00:00Z"},
            ]  # fmt: skip
            items += [
                {"id": 2 + i, "body": body, "author": {"username": who}, "system": False,
                 "created_at": f"2026-01-0{2 + i % 8}T00:00:00Z"}
                for i, (who, body) in enumerate(issue.comments)
            ]  # fmt: skip
            return self._page(f"/api/v4{path}", items, query)
        return not_found

    def _page(
        self, path: str, items: list[Any], query: dict[str, list[str]]
    ) -> tuple[int, Any, dict[str, str]]:
        page = int(query.get("page", ["1"])[0])
        size = self.page_size
        chunk = items[(page - 1) * size : page * size]
        extra: dict[str, str] = {}
        if page * size < len(items):
            keep = {k: v[0] for k, v in query.items() if k != "page"}
            args = "&".join(f"{k}={quote(v)}" for k, v in keep.items())
            extra["link"] = (
                f'<{self.url}{path}?{args}&page={page + 1}>; rel="next", '
                f'<{self.url}{path}?{args}&page={(len(items) - 1) // size + 1}>; rel="last"'
            )
        return 200, chunk, extra

    # -- git over smart HTTP ----------------------------------------------------------------

    def git(
        self, method: str, path: str, query: str, ctype: str, body: bytes, auth: str | None
    ) -> bytes:
        """``git http-backend``'s CGI answer (headers and body) for one request; a private
        project's needs HTTP Basic auth with the token as the password (GitHub's
        ``x-access-token``, GitLab's ``oauth2`` user), as both forges take it."""
        rest = path[len("/git/") :]
        project = rest.split(".git", 1)[0]
        bare = self.repos.get(project)
        if bare is None:
            return b"Status: 404 Not Found\r\n\r\n"
        with self.lock:
            self.seen.append((path, {"authorization": auth} if auth else {}))
        if project in self.private:
            allowed = {
                "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode(),
                "Basic " + base64.b64encode(f"oauth2:{GITLAB_TOKEN}".encode()).decode(),
            }
            if auth not in allowed:
                return b'Status: 401 Unauthorized\r\nWWW-Authenticate: Basic realm="git"\r\n\r\n'
        env = {
            "PATH": "/usr/bin:/bin", "GIT_PROJECT_ROOT": str(bare.parent),
            "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": method,
            "PATH_INFO": "/" + bare.name + rest[len(project) + len(".git") :],
            "QUERY_STRING": query, "CONTENT_TYPE": ctype, "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
        }  # fmt: skip
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        return done.stdout


def _handler(fake: FakeForge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            if parts.path.startswith("/git/"):
                out = fake.git(self.command, parts.path, parts.query,
                               self.headers.get("content-type", ""), self._body(),
                               self.headers.get("authorization"))  # fmt: skip
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                lines = head.decode("latin-1").split("\r\n")
                headers = []
                for line in lines:
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            self._body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer, extra = fake.answer(parts.path, parse_qs(parts.query), headers)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json; charset=utf-8")
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

    return Handler
