"""PM2 INSIDE a sandbox that hosts daemons (a container, a bare ssh host or VM) and has node.

The agent becomes an app of a PM2 daemon inside the sandbox, so PM2's restart policy acts
there and the run does not depend on the host's link to the sandbox. The host still needs
the supervisor (masking, parsing, the log and exit files hal reads), so the host-side PM2
app of :mod:`.pm2` runs a small follower inside (:data:`FOLLOW`, through the sandbox's
``launch``): it builds the app's ecosystem payload, ``pm2 start``\\ s it, copies the app's
output to its own until the app has stopped for good, and exits with the app's status.

The end is PM2's word, never a pause that looked long enough: the app is over when ``pm2
jlist`` shows it ``errored`` (too many unstable restarts) or ``stopped`` with no restart to
come, or no longer lists it (:data:`STATE`); a ``stopped`` app with a restart pending is
waited for (a second's "hold" of the state ended the follower before a late restart ran;
only a restart still pending after some 200 looks, a minute or more, is given up on). The
copy is exact: the program appends its own output to the log (:data:`APP`), so all of it is
in the file once PM2 reports the exit, and ``tail --pid`` follows the log until the watcher
has ended, then reads it to its end and exits by itself (a ``sleep 0.5`` before killing
``tail`` lost the lines a slow reader downstream had not taken yet).

Secrets: the follower gets the exec-time environment as every launched command does (never
an argv); node writes the payload with the values (``env``) mode 600 under the daemon's
home, ``pm2 start`` reads it and it is removed. The payload template crossing argv holds
names and the restart policy only. The daemon and its apps carry a marker of their own (the
exec marker plus ``d``), so they outlive the follower; ``stop`` deletes the app inside
through the control file written at start (a launch command line with no secret in it).

bwrap sandboxes (every exec in a pid namespace of its own) are never asked: their PM2 stays on
the host (:class:`hal9999.process.pm2.Pm2ProcessManager`).
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

from hal9999 import fs
from hal9999.errors import HalError, ProcessError
from hal9999.process.launch import run_host
from hal9999.providers.base import Sandbox
from hal9999.spec import ArgvCommand, ProcessSpec, RestartPolicy

logger = logging.getLogger(__name__)

HOME = ".hal-pm2"
"""The in-sandbox daemon's home, under the sandbox user's HOME."""

APP = '"$@" >>"$0" 2>&1; exit $?'
"""The app's command: ``sh -c APP LOG PROGRAM ARGS...`` runs the program with its output
appended to the log by the program itself. PM2 is not the copier: it destroys its log streams
when the app exits and drops what it had read but not yet written (seen: 1,994,376 of
2,000,000 lines of ``seq`` reached PM2's log), while what the program wrote is in the file
once it has exited. ``sh`` stays the program's parent and exits with its status, a death by
signal as 128+n: PM2 reports an app killed by a signal as exit 0 (fork mode's ``code || 0``),
so an agent the OOM killer ended came back as a success, and was not restarted."""

BUILD = (
    "const e=JSON.parse(Buffer.from(process.argv[1],'base64').toString()),a=e.apps[0];"
    "const log=process.argv[2],env={};"
    "for(const n of process.argv.slice(3)){if(n in process.env)env[n]=process.env[n]}"
    "a.env=env;a.args[2]=log;a.out_file=a.error_file=log;process.stdout.write(JSON.stringify(e))"
)
"""node: the payload template (argv[1], base64) with the log's path (argv[2]) as the app's
``$0`` (see :data:`APP`) and PM2's log files, and ``env`` filled from this process's
environment for the names that follow."""

STATE = (
    "let d='';process.stdin.on('data',c=>d+=c).on('end',()=>{let l;"
    "try{l=JSON.parse(d.slice(d.lastIndexOf('\\n[')+1))}catch(e){}"
    "if(!Array.isArray(l)){console.log('unknown 255');return}"
    "const a=l.find(x=>x.name===process.argv[1]);if(!a){console.log('missing 255');return}"
    "const e=a.pm2_env,s=e.status.replace(/ /g,'-'),c=e.exit_code??255;"
    "const stops=[].concat(e.stop_exit_codes??[]).map(Number);"
    "const again=s==='stopped'&&a.pid>0&&e.autorestart!==false&&e.autorestart!=='false'"
    "&&!stops.includes(c);console.log((again?'restarting':s)+' '+(s==='online'?a.pid:c))})"
)
"""node: ``pm2 jlist`` on stdin to ``STATUS PID`` while online, else ``STATUS EXIT_CODE``.
``restarting`` is PM2's ``stopped`` with a restart to come: PM2 zeroes the pid of an app it
will not restart (stopped on request, autorestart off, an exit code of ``stop_exit_codes``,
too many unstable restarts: ``errored``) and keeps it while the restart is pending.
``unknown``: no list could be read (``pm2`` failed); ``missing``: the app is not listed."""

FOLLOW = (
    "set -u; umask 077; name=$1; eco=$2; build=$3; state=$4; prog=$5; shift 5; "
    # PM2 would say "Script not found" and start nothing: the same 127 as everywhere.
    'command -v -- "$prog" >/dev/null || { echo "hal: $prog: command not found" >&2; exit 127; }; '
    'export PM2_HOME="$HOME/' + HOME + '"; '
    "if ! command -v pm2 >/dev/null || ! command -v node >/dev/null; then "
    'echo "hal: pm2 or node is missing inside the sandbox" >&2; exit 127; fi; '
    'mkdir -p -- "$PM2_HOME" || exit 125; log="$PM2_HOME/$name.log"; f="$PM2_HOME/$name.json"; '
    'node -e "$build" "$eco" "$log" "$@" > "$f" || exit 125; : > "$log"; '
    'HAL_EXEC="${HAL_EXEC:-}d" pm2 start "$f" > "$PM2_HOME/$name.start" 2>&1; s=$?; '
    'rm -f -- "$f"; if [ $s -ne 0 ]; then tail -n 3 "$PM2_HOME/$name.start" >&2; exit 125; fi; '
    # The watcher: ends, with the app's status, once PM2 says it is over for good.
    '( u=0; p=0; while :; do set -- $(pm2 jlist 2>/dev/null | node -e "$state" "$name"); '
    "case ${1:-unknown} in "
    # One waiting process for the whole run (a `sleep` 5 times a second was ~18,000 an hour).
    'online) u=0; p=0; if [ "${2:-0}" -gt 0 ] 2>/dev/null; then '
    'tail --pid="$2" -s 0.2 -f /dev/null 2>/dev/null || '
    'while kill -0 "$2" 2>/dev/null; do sleep 0.2; done; else sleep 0.3; fi ;; '
    "launching|waiting-restart|one-launch-status|stopping) u=0; p=0; sleep 0.3 ;; "
    # Bounds for what should not last: a restart PM2 never carries out, pm2 failing.
    "restarting) u=0; p=$((p + 1)); [ $p -lt 200 ] || break; sleep 0.3 ;; "
    "unknown) p=0; u=$((u + 1)); [ $u -lt 5 ] || break; sleep 1 ;; "
    "*) break ;; esac; done; "
    'case ${2:-255} in ""|*[!0-9]*) exit 255 ;; *) exit "$2" ;; esac ) & w=$!; '
    # The copier: once the watcher is gone (reaped by `wait`), tail reads the log to its end
    # and exits by itself, so the follower ends on the log's final size, not after a sleep.
    'tail -c +1 -F -s 0.2 --pid=$w -- "$log" 2>/dev/null & t=$!; '
    "wait $w; s=$?; wait $t; exit $s"
)
"""The follower (see the module docstring); ``$1`` the app's name, ``$2`` the payload
template, ``$3``/``$4`` :data:`BUILD`/:data:`STATE`, ``$5`` the program, then the names of
the variables."""

STOP = 'export PM2_HOME="$HOME/' + HOME + '"; command -v pm2 >/dev/null || exit 0; ' \
    'pm2 delete "$1" >/dev/null 2>&1; exit 0'  # fmt: skip
"""Delete the app inside (idempotent)."""

STOP_TIMEOUT_S = 30.0
"""How long the host waits for ``pm2`` inside to stop or show the app. Its daemon and home
are the agent's (under the agent's HOME): an agent that listens on its ``rpc.sock`` without
answering made ``pm2 delete`` wait for ever, and with it the stop of a task past its time
limit (the task never ended, its container never went). Past the bound the host goes on:
the sandbox is restarted or removed next, which ends whatever ran inside."""


def hosts_daemons(sandbox: Sandbox) -> bool:
    """Whether a daemon started by one command of ``sandbox`` outlives it (declared by the
    sandbox handle: containers and bare ssh hosts do; bwrap's pid namespaces do not)."""
    return bool(getattr(sandbox, "hosts_daemons", False))


async def has_pm2(sandbox: Sandbox) -> bool:
    """Whether node and pm2 are on the sandbox's PATH."""
    probe = ArgvCommand(argv=("sh", "-c", "command -v node && command -v pm2"))
    try:
        return (await sandbox.exec(probe, timeout=60)).ok
    except HalError:  # a sandbox that cannot say has no pm2 for us
        return False


def payload(spec: ProcessSpec, name: str, cwd: str, min_uptime_ms: int,
            kill_timeout_ms: int) -> dict[str, Any]:  # fmt: skip
    """The app's ecosystem document without ``env`` and the log's path (the follower adds
    them inside)."""
    from hal9999.spec import to_argv

    restart = spec.restart.mode == "on-failure"
    # The program writes its own output to the log (APP, its $0 the log's path, and PM2's log
    # files: the follower fills them in inside, where it knows the daemon's home).
    app: dict[str, Any] = {
        "name": name, "script": "/bin/sh", "args": ["-c", APP, "", *to_argv(spec.command)],
        "interpreter": "none", "cwd": cwd, "autorestart": restart,
        "kill_timeout": kill_timeout_ms, "treekill": True,
    }  # fmt: skip
    if restart:
        app |= {"max_restarts": spec.restart.max_restarts + 1, "min_uptime": min_uptime_ms,
                "stop_exit_codes": [0]}  # fmt: skip
    return {"apps": [app]}


def follower_spec(spec: ProcessSpec, document: dict[str, Any], names: list[str]) -> ProcessSpec:
    """``spec`` with the follower as its command and no restart of its own (PM2 inside
    restarts the app; the follower only ends when the app has stopped for good)."""
    from hal9999.spec import to_argv

    name = document["apps"][0]["name"]
    template = base64.b64encode(json.dumps(document).encode()).decode()
    program = to_argv(spec.command)[0]
    argv = ("sh", "-c", FOLLOW, "hal-pm2", name, template, BUILD, STATE, program, *names)
    return spec.model_copy(update={"command": ArgvCommand(argv=argv), "restart": RestartPolicy()})


def control_path(spec: ProcessSpec, name: str) -> Path:
    """Where the host keeps how to reach the app inside (for ``stop``)."""
    return spec.log_path.parent / f".pm2-inside-{name}.json"


def save_control(sandbox: Sandbox, spec: ProcessSpec, name: str) -> None:
    """Record the launch command line that stops the app (no secret: no exec-time
    environment is given to it)."""
    stop = sandbox.launch(ArgvCommand(argv=("sh", "-c", STOP, "hal-pm2-stop", name)))
    data = {"stop": {"argv": stop.argv, "env": stop.env}}
    path = control_path(spec, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fs.write_json(path, data, mode=0o600, durable=False)


def _control(spec: ProcessSpec, name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(control_path(spec, name).read_text()))
    except (OSError, ValueError):
        return None


async def stop_inside(spec: ProcessSpec, name: str) -> None:
    """Delete the app inside the sandbox, when it was started there. Idempotent."""
    control = _control(spec, name)
    if control is None:
        return
    try:
        await run_host(
            control["stop"]["argv"], env=control["stop"]["env"], check=False,
            limit_s=STOP_TIMEOUT_S,
        )  # fmt: skip
    except ProcessError as exc:  # the agent's daemon did not answer: its sandbox goes next
        logger.warning("pm2 inside the sandbox did not stop the app %s: %s", name, exc)
    control_path(spec, name).unlink(missing_ok=True)
