#!/usr/bin/env python3
"""A stand-in "claude" that holds FIRST model calls open at once through ANTHROPIC_BASE_URL,
each on its own connection, then sends EXTRA more one at a time and reads each one's answer
at once: prints ``REFUSED <n> <status>`` for each of those that is not a 200, then reads the
FIRST (the test's upstream holds them until it has seen EXTRA refusals) and prints
``CALLS <answered 200> <refused>``.

An extra call the gateway's door turns away (503 ``too_many_connections``: the FIRST
connections, sent but not yet read by a loaded gateway, are all still "waiting") is sent
again: the door bounds waiting connections, not calls, and this agent is about the calls'
bound. Any other answer is final. An extra call the gateway let through would be held by the
upstream like the FIRST, so this agent would never print EXTRA refusals (the test fails)."""

import json
import os
import socket
import sys
import time
from urllib.parse import urlsplit


def status(conn: socket.socket) -> str:
    """The answer's status, or how the call ended without one (``none-eof`` after N bytes,
    ``none-reset``, ``none-timeout``): which side closed it tells a failure apart."""
    data = b""
    started = time.monotonic()
    while b"\r\n" not in data:
        try:
            chunk = conn.recv(4096)
        except ConnectionResetError:
            return f"none-reset-{time.monotonic() - started:.1f}s"
        except TimeoutError:
            return "none-timeout"
        if not chunk:
            return f"none-eof-{len(data)}b-{time.monotonic() - started:.1f}s"
        data += chunk
    parts = data.split(b" ")
    return parts[1].decode() if len(parts) > 1 else "none-garbled"


def main() -> int:
    first, extra = (int(n) for n in sys.stdin.read().split()[:2])
    base = urlsplit(os.environ["ANTHROPIC_BASE_URL"])
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": []}).encode()
    head = (
        f"POST {base.path.rstrip('/')}/v1/messages HTTP/1.1\r\nHost: {base.hostname}\r\n"
        f"x-api-key: {os.environ['ANTHROPIC_API_KEY']}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()

    def call() -> socket.socket:
        conn = socket.create_connection((base.hostname, base.port), timeout=300)
        conn.sendall(head + body)
        return conn

    held = [call() for _ in range(first)]
    refused = door = 0
    for _ in range(extra):
        for _ in range(2400):  # the test gives up after 120 s
            conn = call()
            got = status(conn)
            conn.close()
            if got != "503":
                break
            door += 1
            time.sleep(0.05)
        refused += 1
        print(f"REFUSED {refused} {got}", flush=True)
    print(f"DOOR {door}", flush=True)
    answered = sum(status(conn) == "200" for conn in held)
    for conn in held:
        conn.close()
    print(f"CALLS {answered} {refused}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
