"""``python -m hal9999.providers.ray.relay``: run one command in a ray sandbox from a host
process (what a process manager starts; see :meth:`RaySandbox.launch`).

The relay joins the Ray cluster itself, so the run goes on when the hal process that
launched it dies (the process manager holds the relay, as it holds any launched command).
Values of the command's variables come from this process's environment (names in argv) and
reach the node as the arguments of the host actor's call, never in a command line. Before
the command the read-only directories (the prompt) go out; while it runs the writable ones
come back every ``checkpoint_s``; when it ends (or this relay is told to stop: the node
kills the command) they come back once more. A node lost under the run ends the relay with
status 255 and one line on stderr; the hal host keeps what the last checkpoint brought back.
The skeleton is :mod:`hal9999.providers.remote.relay`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from hal9999.providers.remote import relay as relaycore
from hal9999.providers.remote.stdin import feed_stdin


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = relaycore.arguments("hal-ray-relay")
    parser.add_argument("--config", required=True, help="[providers.ray] settings as JSON")
    parser.add_argument(
        "--stdin", action="store_true", help="our stdin goes to the command (an attached shell)"
    )
    return parser.parse_args(argv)


async def relay(args: argparse.Namespace) -> int:
    """Run the command on its node; its exit status."""
    from hal9999.providers.ray.provider import RayConfig, RayProvider

    provider = RayProvider(state_dir=args.records,
                           config=RayConfig.model_validate_json(args.config))  # fmt: skip
    sandbox = await provider.get(args.id)
    feed: asyncio.Queue[bytes] | None = None
    if args.stdin:
        feed = asyncio.Queue()
        feed_stdin(asyncio.get_running_loop(), feed)
    # The stream pushes first and pulls once more at its end, stopped or not: cancelled,
    # it closes on the node (the command is killed there; see RaySandbox.stream).
    stream = sandbox.stream(relaycore.command_of(args), env=relaycore.env_of(args), feed=feed)
    return await relaycore.follow(relaycore.write_events(stream), pull=sandbox.pull,
                                  every=provider.config.checkpoint_s, final_pull=False)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point; the command's exit status (255: the node or the cluster was lost)."""
    from hal9999.providers.ray.provider import RayConfig, connect

    args = _arguments(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        config = RayConfig.model_validate_json(args.config)
        # Joined here, in the main thread: Ray sets its signal handlers only there (and
        # says so on stderr, which is the run's log, when it cannot).
        connect(config.address, config.namespace, config.connect_timeout_s)
        return asyncio.run(relay(args))

    return relaycore.run_main(body, "ray", errors=(OSError, ValueError))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leaving Ray's driver without its shutdown: the cluster notices the driver's end by
    # itself, and the run's exit is not held for it.
    os._exit(code)
