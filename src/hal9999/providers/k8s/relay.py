"""``python -m hal9999.providers.k8s.relay``: run one command in a pod sandbox from a host
process (what a process manager starts; see :meth:`KubeSandbox.launch`).

Values of the command's variables come from this process's environment (names in argv) and
reach the pod on the exec stream's stdin, never in its URL. Before the command the read-only
directories (the prompt) go out; while it runs the writable ones come back every
``CHECKPOINT_S``; when it ends (or this relay is told to stop) they come back once more and
the command's processes in the pod are killed. This process's stdin streams to the
command's (closed at its end with v5's close frame). A lost stream ends the relay with
status 255 and one line on stderr; the hal host keeps the last checkpoint. The skeleton is
:mod:`hal9999.providers.remote.relay`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys

from hal9999.providers.k8s.config import connect
from hal9999.providers.k8s.sandbox import KubeRecords, KubeSandbox
from hal9999.providers.k8s.sockmux import SocketChannel
from hal9999.providers.remote import relay as relaycore
from hal9999.providers.remote.stdin import stdin_chunks

CHECKPOINT_S = 60.0
"""How often a running command's work comes back to the hal host."""


def _arguments(argv: list[str]) -> argparse.Namespace:
    return relaycore.arguments("hal-k8s-relay").parse_args(argv)


async def relay(args: argparse.Namespace) -> int:
    """Run the command; its exit status."""
    records = KubeRecords(args.records)
    record = records.load(args.id)
    cluster = connect(record.settings)

    async def keep(_: str) -> None:  # the relay never destroys its sandbox
        return None

    sandbox = KubeSandbox(record, records, lambda: cluster, keep)
    token = secrets.token_hex(8)
    await sandbox.push(writable=False)
    sockets = SocketChannel(sandbox, relaycore.say)  # the gateway's sockets, answering in the pod
    await sockets.start()
    # Cancelled on a stop, the stream closes and kills the command by its marker.
    events = sandbox._events(relaycore.command_of(args), relaycore.env_of(args),
                             stdin_chunks(), token)  # fmt: skip
    return await relaycore.follow(relaycore.write_events(events), pull=sandbox.pull,
                                  every=CHECKPOINT_S, closing=sockets.stop)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point; the command's exit status (255: the cluster could not be reached)."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    return relaycore.run_main(lambda: asyncio.run(relay(args)), "kubernetes")


if __name__ == "__main__":
    sys.exit(main())
