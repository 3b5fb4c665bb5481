#!/usr/bin/env python3
"""A stand-in "claude" that leaves a file in the workspace, then makes CALLS model calls
through ANTHROPIC_BASE_URL; it exits 1 at the first answer that is not 200 (printing it)."""

import json
import os
import sys
import urllib.error
import urllib.request

CALLS = int(os.environ.get("CALLER_CALLS", "3"))


def call() -> tuple[int, str]:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": True, "messages": []}
    request = urllib.request.Request(
        os.environ["ANTHROPIC_BASE_URL"].rstrip("/") + "/v1/messages",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def main() -> int:
    with open("work.txt", "w") as handle:
        handle.write("work done before the budget ran out\n")
    for n in range(CALLS):
        status, text = call()
        print(f"CALL {n} {status} {text[:300]}", flush=True)
        if status != 200:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
