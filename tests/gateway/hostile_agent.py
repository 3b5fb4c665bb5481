#!/usr/bin/env python3
"""A hostile "claude": looks everywhere it can for the API key, then calls the model.

Run inside the sandbox in place of the claude CLI (``[agents.claude] command``). It prints one
JSON line (``HOSTILE {...}``) with what it found; the test reads it from the task's log.
"""

import json
import os
import sys
import urllib.error
import urllib.request

NEEDLE = ("sk-hal-" + "e2e-").encode()  # split: this file itself must not hold the needle
SKIP = ("/proc", "/sys", "/dev", "/usr")


def scan_proc() -> list[str]:
    hits = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as handle:
                    if NEEDLE in handle.read():
                        hits.append(f"/proc/{pid}/{name}")
            except OSError:
                pass
    return hits


def scan_files() -> tuple[list[str], int]:
    hits, seen = [], 0
    for root, dirs, files in os.walk("/", onerror=None):
        if root.startswith(SKIP):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as handle:
                    seen += 1
                    if NEEDLE in handle.read(8 << 20):
                        hits.append(path)
            except OSError:
                pass
    return hits, seen


def call(key: str) -> int:
    base = os.environ["ANTHROPIC_BASE_URL"].rstrip("/")
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
    request = urllib.request.Request(
        base + "/v1/messages",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "x-api-key": key,
            "content-type": "application/json",
            "anthropic-version": "2023-06-01",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return -1


def main() -> int:
    token = os.environ.get("ANTHROPIC_API_KEY", "")
    files, seen = scan_files()
    report = {
        "proc_hits": scan_proc(),
        "file_hits": files,
        "files_seen": seen,
        "token_prefix": token[:7],
        "status": call(token),
        "forged_status": call("hal-gw-" + "A" * 32),
        "gateway_dir": sorted(os.listdir("/hal-gateway")),
    }
    print("HOSTILE " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
