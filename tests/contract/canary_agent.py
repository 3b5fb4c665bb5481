#!/usr/bin/env python3
"""A hostile agent for any preset: looks everywhere it can for a canary key, then calls the
model through the gateway with the placeholder token it holds.

Run inside the sandbox in place of the preset's CLI (``[agents.NAME] command``). What to call
is in ``canary.json`` beside it (the API's path, the header the key goes in, the body); the
gateway's port is the one in the base URL the preset handed the agent (its environment or a
config file under its home). It prints one JSON line (``CANARY {...}``) with what it found.
"""

import json
import os
import re
import sys
import urllib.error
import urllib.request

NEEDLE = ("sk-hal-" + "canary-").encode()  # split: this file itself must not hold the needle
SKIP = ("/proc", "/sys", "/dev", "/usr")
LOCAL_URL = re.compile(rb"http://127\.0\.0\.1:(\d+)")


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


def gateway_ports() -> list[int]:
    """Loopback ports in the base URLs the preset handed over (argv, environment, home)."""
    given = [*os.environb.values(), *(os.fsencode(arg) for arg in sys.argv)]
    found: list[bytes] = [m.group(1) for v in given for m in LOCAL_URL.finditer(v)]
    for root, _dirs, files in os.walk(os.environ.get("HOME", "/nonexistent")):
        for name in files:
            try:
                with open(os.path.join(root, name), "rb") as handle:
                    found.extend(m.group(1) for m in LOCAL_URL.finditer(handle.read(1 << 20)))
            except OSError:
                pass
    return sorted({int(port) for port in found})


def call(port: int, plan: dict, token: str) -> int:
    header = plan["header"]
    value = f"Bearer {token}" if header == "authorization" else token
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{plan['path']}",
        data=json.dumps(plan["body"]).encode(),
        method="POST",
        headers={
            header: value,
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
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "canary.json")) as f:
        plan = json.load(f)
    token = os.environ.get("HAL_GATEWAY_TOKEN", "")
    files, seen = scan_files()
    ports = gateway_ports()
    report = {
        "proc_hits": scan_proc(),
        "file_hits": files,
        "files_seen": seen,
        "token_prefix": token[:7],
        "ports": ports,
        "status": [call(port, plan, token) for port in ports],
    }
    print("CANARY " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
