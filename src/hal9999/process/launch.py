"""How both process managers turn a :class:`ProcessSpec` into a supervised host command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hal9999.errors import CapabilityError, ProcessError
from hal9999.providers.base import Launch, Sandbox
from hal9999.spec import ProcessSpec


def supervised(sandbox: Sandbox, spec: ProcessSpec, env: Mapping[str, str] | None) -> Launch:
    """The host command that runs ``spec`` inside ``sandbox`` under the supervisor.

    Every exec-time variable is treated as a secret: its name is passed to the supervisor,
    which masks its value in the log.
    """
    try:
        inner = sandbox.launch(spec.command, env=env)
    except NotImplementedError as exc:
        raise CapabilityError(
            f"provider {sandbox.provider!r} cannot run host-supervised processes",
            hint="use a provider with host launch support, such as bwrap or local",
        ) from exc
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    spec.exit_path.unlink(missing_ok=True)
    mask = [arg for name in sorted(env or {}) for arg in ("--mask-var", name)]
    argv = [
        sys.executable,
        "-m",
        "hal9999.process.supervisor",
        "--log",
        str(spec.log_path),
        "--exit",
        str(spec.exit_path),
        *mask,
        "--",
        *inner.argv,
    ]
    return Launch(argv=argv, env=inner.env, cwd=inner.cwd)


async def run_host(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, check: bool = True
) -> tuple[int, str]:
    """Run a host helper command (tmux, kill) and return its status and combined output."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError as exc:
        raise ProcessError(
            f"{argv[0]} is not installed", hint=f"apt-get install {Path(argv[0]).name}"
        ) from exc
    out, _ = await proc.communicate()
    text = out.decode("utf-8", "replace")
    status = proc.returncode if proc.returncode is not None else -1
    if check and status != 0:
        raise ProcessError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed: {text.strip()}")
    return status, text
