#!/usr/bin/env python3
"""A stand-in "claude" that opens as many tunnels as it can through HTTPS_PROXY to the host
named in the prompt and holds them: prints ``TUNNELS <opened> <refused>``."""

import base64
import os
import socket
import sys
from urllib.parse import urlsplit


def main() -> int:
    target, count = sys.stdin.read().split()
    proxy = urlsplit(os.environ["HTTPS_PROXY"])
    auth = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
    held, refused = [], 0
    for _ in range(int(count)):
        conn = socket.create_connection((proxy.hostname, proxy.port), timeout=20)
        conn.sendall(
            f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
        if b" 200 " in head.split(b"\r\n")[0]:
            held.append(conn)
        else:
            refused += 1
            conn.close()
    print(f"TUNNELS {len(held)} {refused}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
