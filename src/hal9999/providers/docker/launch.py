"""``python -m hal9999.providers.docker.launch NAMES -- CLI...``: the host side of a
``docker`` sandbox's :meth:`launch`.

It runs the engine CLI's ``exec -i`` (``CLI...``) with an environment that holds none of
the command's variables, writes those variables (``NAMES``, comma-separated, read from its
own environment) as the block :data:`hal9999.providers.docker.engine.ENV_WRAPPER` reads first,
then relays its own stdin. So a secret is in no argv and in no engine exec record.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from hal9999.providers.docker.engine import env_block

KEEP = ("PATH", "HOME", "LANG", "TERM", "XDG_RUNTIME_DIR")
"""What the engine CLI itself may see of this process's environment."""


def main(args: list[str]) -> int:
    """Run the CLI, feed it the block and our stdin; its exit status is ours."""
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write("usage: python -m hal9999.providers.docker.launch NAMES -- CLI...\n")
        return 2
    names, cli = args[0], args[2:]
    wanted = [name for name in names.split(",") if name]
    block = env_block({name: os.environ[name] for name in wanted if name in os.environ})
    env = {key: os.environ[key] for key in KEEP if key in os.environ}
    child = subprocess.Popen(cli, stdin=subprocess.PIPE, env=env)
    assert child.stdin is not None
    sink = child.stdin

    def relay() -> None:
        try:
            sink.write(block)
            sink.flush()
            while chunk := os.read(0, 65536):
                sink.write(chunk)
                sink.flush()
        except OSError:
            pass  # the command ended or stopped reading
        finally:
            try:
                sink.close()
            except OSError:
                pass

    threading.Thread(target=relay, daemon=True).start()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
