"""How both process managers turn a :class:`ProcessSpec` into a supervised host command."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from hal9999.errors import CapabilityError, ProcessError
from hal9999.process.supervisor import ended_path, go_path, unstarted_path
from hal9999.process.supervisorargv import SUPERVISOR as SUPERVISOR  # tests patch it here
from hal9999.providers.base import LOCAL_STOP_GRACE_S, Launch, Sandbox
from hal9999.providers.host.exec import dies_with_helper
from hal9999.spec import ProcessSpec


class SupervisedLaunch(Launch):
    """The supervisor's host command line, and whether its start takes the run's marker.

    A plain subclass, not a dataclass: an in-process run makes it, and Python 3.11 compiles
    each dataclass's methods at import (``tests/cli/test_run_imports.py``'s ``DATACLASSES``).
    Equality and ``repr`` are :class:`Launch`'s."""

    claims: bool
    """Whether the supervisor starts the command only once it has taken the run's
    :func:`~hal9999.process.supervisor.unstarted_path` marker (``--claim``): the run was
    armed (:func:`hal9999.process.base.arm_start`) and a claim was asked for."""

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: Path | None, *, claims: bool = False,
        stop_grace_s: int = LOCAL_STOP_GRACE_S,
    ) -> None:  # fmt: skip
        super().__init__(argv=argv, env=env, cwd=cwd, stop_grace_s=stop_grace_s)
        object.__setattr__(self, "claims", claims)  # frozen, as Launch's fields


def supervised(
    sandbox: Sandbox,
    spec: ProcessSpec,
    env: Mapping[str, str] | None,
    *,
    ended_fifo: bool = True,
    go: bool = False,
    restarts: bool = False,
    claim: bool = False,
    claim_as: Path | None = None,
) -> SupervisedLaunch:
    """The host command that runs ``spec`` inside ``sandbox`` under the supervisor.

    The names of the secret exec-time variables (``spec.mask_vars``, or every one when unset)
    are passed to the supervisor, which masks their values; with ``spec.parser`` it also
    parses the raw output into ``spec.events_path``. Without ``ended_fifo`` no FIFO is made
    beside the exit file (a manager that knows the supervisor's pid wakes its follower
    through a pidfd instead; see :meth:`DirectProcessManager.ended_fd`). With ``go`` the
    supervisor waits for a ``g`` on the FIFO :func:`go_path` names, made here, before it
    starts the command (a manager that starts it ahead of the run; see
    :meth:`TmuxProcessManager.prestart`). With ``restarts`` the supervisor runs a failed
    command again as ``spec.restart`` says (tmux and direct; PM2 restarts its app itself).
    With ``claim``, a run hal marked not started before recording it ``running``
    (:func:`hal9999.process.base.arm_start`) is started only if its supervisor takes that
    marker first (``--claim``; a run with no marker starts as before), renamed to
    ``claim_as`` when given (the supervisor writes its pid into it first): a supervisor
    run once a start (direct, and PM2 for an app it does not restart). The answer's
    ``claims`` says whether this start claims.
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
    unstarted = unstarted_path(spec.exit_path)
    # Armed by hal for this start (the supervisor takes it), or an earlier try's (removed).
    claimed = claim and not go and os.path.lexists(unstarted)
    if not claimed:
        Path(unstarted).unlink(missing_ok=True)
    ended = Path(ended_path(spec.exit_path))
    with contextlib.suppress(OSError):  # no FIFO here: the follower polls the exit file
        ended.unlink(missing_ok=True)
        if ended_fifo:
            os.mkfifo(ended, 0o600)
    if spec.events_path is not None:
        spec.events_path.unlink(missing_ok=True)
    if go:
        fifo = Path(go_path(spec.exit_path))
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)
    names = sorted(env or {}) if spec.mask_vars is None else sorted(spec.mask_vars)
    options = [arg for name in names for arg in ("--mask-var", name)]
    options += [arg for path in spec.mask_files for arg in ("--mask-file", str(path))]
    if spec.parser is not None and spec.events_path is not None:
        options += ["--parser", spec.parser, "--events", str(spec.events_path)]
    if spec.log_cap is not None:
        options += ["--log-cap", str(spec.log_cap)]
    if go:
        options += ["--go", go_path(spec.exit_path)]
    if claimed:
        options += ["--claim", unstarted]
        options += ["--claim-as", str(claim_as)] if claim_as is not None else []
    if restarts and spec.restart.mode == "on-failure" and spec.restart.max_restarts > 0:
        options += ["--restarts", str(spec.restart.max_restarts)]
    options += ["--stop-grace", str(inner.stop_grace_s)]
    # The command dies with its supervisor (a `kill -9` of it left the agent running).
    dies = dies_with_helper()
    if dies is not None:
        options += ["--dies-with", dies]
    argv = [
        *SUPERVISOR,
        "--log",
        str(spec.log_path),
        "--exit",
        str(spec.exit_path),
        *options,
        "--",
        *inner.argv,
    ]
    return SupervisedLaunch(argv=argv, env=inner.env, cwd=inner.cwd, claims=claimed,
                            stop_grace_s=inner.stop_grace_s)  # fmt: skip


async def run_host(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    limit_s: float | None = None,
) -> tuple[int, str]:
    """Run a host helper command (tmux, kill) and return its status and combined output.

    With ``limit_s``, a command still running after that many seconds is killed and a
    :class:`ProcessError` says so (a command that reaches into a sandbox talks to what the
    agent controls there, which may never answer)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            # Bounded: a group of its own, all of it killed at the bound (a wrapper's child,
            # an engine's client, held the output pipe open past the wrapper's death).
            start_new_session=limit_s is not None,
        )
    except FileNotFoundError as exc:
        raise ProcessError(
            f"{argv[0]} is not installed", hint=f"apt-get install {Path(argv[0]).name}"
        ) from exc
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        from hal9999.procs import kill_group_until_gone

        await kill_group_until_gone(proc)
        raise ProcessError(
            f"{argv[0]} {argv[1] if len(argv) > 1 else ''} did not finish in {limit_s:g} s"
        ) from None
    text = out.decode("utf-8", "replace")
    status = proc.returncode if proc.returncode is not None else -1
    if check and status != 0:
        raise ProcessError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed: {text.strip()}")
    return status, text
