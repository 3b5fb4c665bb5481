#!/usr/bin/env python3
"""A stand-in "claude" that tries the network through HTTPS_PROXY: a denied host, then the
host named in the prompt (allowed); prints ``EGRESS <target> <result>`` for each."""

import base64
import os
import socket
import sys
from urllib.parse import urlsplit


def tunnel(target: str) -> str:
    proxy = urlsplit(os.environ["HTTPS_PROXY"])
    auth = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
    with socket.create_connection((proxy.hostname, proxy.port), timeout=20) as conn:
        conn.sendall(
            f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
        status = head.split(b"\r\n")[0].decode()
        if " 200 " not in status:
            return status
        conn.sendall(b"through the tunnel\n")
        return conn.recv(4096).decode().strip()


def direct(target: str) -> str:
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        return f"direct refused: {type(exc).__name__}"
    return "direct connected"


def main() -> int:
    allowed = sys.stdin.read().strip()
    for target in ("denied.example:443", allowed):
        print(f"EGRESS {target} {tunnel(target)}", flush=True)
    print(f"DIRECT {allowed} {direct(allowed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
