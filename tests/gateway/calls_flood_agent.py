#!/usr/bin/env python3
"""A stand-in "claude" that sends N model calls at once through ANTHROPIC_BASE_URL, each on
its own connection, then reads their answers last sent first: prints ``REFUSED <n> <status>``
for each answer that is not a 200, then ``CALLS <answered 200> <refused>``."""

import json
import os
import socket
import sys
from urllib.parse import urlsplit


def status(conn: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    parts = data.split(b" ")
    return parts[1].decode() if len(parts) > 1 else "none"


def main() -> int:
    count = int(sys.stdin.read().split()[0])
    base = urlsplit(os.environ["ANTHROPIC_BASE_URL"])
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": []}).encode()
    head = (
        f"POST {base.path.rstrip('/')}/v1/messages HTTP/1.1\r\nHost: {base.hostname}\r\n"
        f"x-api-key: {os.environ['ANTHROPIC_API_KEY']}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    conns = []
    for _ in range(count):
        conn = socket.create_connection((base.hostname, base.port), timeout=300)
        conn.sendall(head + body)
        conns.append(conn)
    answered = refused = 0
    for conn in reversed(conns):  # the last asked are the ones refused, at once
        got = status(conn)
        if got == "200":
            answered += 1
        else:  # 429 too_many_calls (or 503 from the door, for a connection not yet read)
            refused += 1
            print(f"REFUSED {refused} {got}", flush=True)
        conn.close()
    print(f"CALLS {answered} {refused}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
