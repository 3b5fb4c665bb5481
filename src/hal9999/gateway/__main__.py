"""``python -m hal9999.gateway --home HAL_HOME [--detach]``: run the gateway of a HAL_HOME.

With ``--detach`` the command returns once a detached gateway listens (or another one holds
the lock), so the caller can wait for it like any short command.
"""

from __future__ import annotations

import argparse
import os
import sys

from hal9999.gateway.lock import take_lock


def _serve(home: str, ready: int | None) -> int:
    lock = take_lock(home)
    if lock is None:
        if ready is not None:
            os.write(ready, b"busy\n")
        return 0  # another gateway holds this HAL_HOME
    # Only the winner imports the server (Starlette, httpx, the store: ~0.4 s of CPU): in a
    # start race (tens of runs at once) every loser stops above.
    import asyncio
    import logging
    from pathlib import Path

    from hal9999.gateway.channel import GatewayPaths
    from hal9999.gateway.server import GatewayServer, idle_seconds, prepare_channel

    paths = GatewayPaths(Path(home))
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
    parser.add_argument("--home", required=True)
    parser.add_argument("--detach", action="store_true")
    args = parser.parse_args(argv)
    if not args.detach:
        return _serve(args.home, None)
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
        code = _serve(args.home, write_end)
    except BaseException:
        import traceback  # only now: a loser of a start race never needs it

        # os._exit below prints nothing: the reason goes to the log (stderr is the log).
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
