#!/usr/bin/env python3
"""A stand-in "claude" for runs that outlive their gateway: one model call, then it waits for
``go`` in the workspace (the test kills things meanwhile), then a second call, retried while
the gateway is away (a refused connection, or 401 before its grant is back)."""

import json
import os
import sys
import time
import urllib.error
import urllib.request


def call() -> int:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": []}
    request = urllib.request.Request(
        os.environ["ANTHROPIC_BASE_URL"].rstrip("/") + "/v1/messages",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def main() -> int:
    print(f"CALL 1 {call()}", flush=True)
    while not os.path.exists("go"):
        time.sleep(0.2)
    deadline = time.monotonic() + 60
    while (status := call()) != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"CALL 2 {status}", flush=True)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
