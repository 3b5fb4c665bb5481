"""``python -m hal9999.gateway --home HAL_HOME [--detach]``: run the gateway of a HAL_HOME.

With ``--detach`` the command returns once a detached gateway listens (or another one holds
the lock), so the caller can wait for it like any short command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from pathlib import Path

from hal9999.gateway.channel import GatewayPaths
from hal9999.gateway.server import GatewayServer, idle_seconds, prepare_channel, take_lock


def _serve(paths: GatewayPaths, ready: int | None) -> int:
    lock = take_lock(paths)
    if lock is None:
        if ready is not None:
            os.write(ready, b"busy\n")
        return 0  # another gateway holds this HAL_HOME
    prepare_channel(paths)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s gateway[%(process)d] %(levelname)s %(message)s"
    )
    # httpx logs each request's URL at INFO, and a Gemini key may travel in the query string.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server = GatewayServer(paths, idle_seconds(dict(os.environ)))
    asyncio.run(server.run(ready))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m hal9999.gateway")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--detach", action="store_true")
    args = parser.parse_args(argv)
    paths = GatewayPaths(args.home)
    if not args.detach:
        return _serve(paths, None)
    read_end, write_end = os.pipe()
    if os.fork() != 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            said = pipe.readline()
        return 0 if said in (b"ready\n", b"busy\n") else 1
    os.close(read_end)
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    code = 1
    try:
        code = _serve(paths, write_end)
    except BaseException:
        # os._exit below prints nothing: the reason goes to the log (stderr is the log).
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
