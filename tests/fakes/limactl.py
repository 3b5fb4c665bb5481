"""A fake ``limactl`` for the lima provider's tests (run as ``limactl`` from PATH).

It follows the documented CLI: ``start --name=NAME --tty=false FILE`` (create and boot from
a YAML/JSON config) or ``start NAME``, ``list --json [NAME...]`` (one JSON object per line
with ``name``, ``status``, ``dir``, ``sshLocalPort``, ``sshAddress``, ``config``...),
``stop [--force] NAME``, ``delete [--force] NAME`` (refused for a running VM without
``--force``), ``shell NAME CMD...``. Instances live under ``$LIMA_HOME`` as the real ones
do, and the user key is ``$LIMA_HOME/_config/user``.

What it cannot do is boot a VM. Its "VM" is the test's sshd (``FAKE_LIMA_SSH_ADDRESS``,
``FAKE_LIMA_USER``, ``FAKE_LIMA_USER_KEY``): booting runs the config's ``mode: system``
provision scripts as the real guest would, but in a private mount namespace where
``/etc/ssh`` is a scratch directory, then installs the host key they wrote as the test
sshd's (``FAKE_LIMA_HOST_KEY``) and restarts it (SIGHUP to ``FAKE_LIMA_SSHD_PID``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sshd_reload import reload_sshd  # beside this script (sys.path[0])

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def home() -> Path:
    return Path(os.environ.get("LIMA_HOME") or Path.home() / ".lima")


def fail(message: str) -> int:
    # limactl reports errors as logrus FATA lines on stderr, exit status 1.
    sys.stderr.write(f'level=fatal msg="{message}"\n')
    return 1


def state(name: str) -> dict[str, object]:
    return json.loads((home() / name / "fake-state.json").read_text())


def save(name: str, status: str) -> None:
    (home() / name / "fake-state.json").write_text(json.dumps({"status": status}))


def instance(name: str) -> dict[str, object]:
    directory = home() / name
    config = json.loads((directory / "lima.yaml").read_text())
    running = state(name)["status"] == "Running"
    user = os.environ["FAKE_LIMA_USER"]
    config.setdefault("user", {"name": user})
    data: dict[str, object] = {
        "name": name, "status": "Running" if running else "Stopped", "dir": str(directory),
        "vmType": "qemu", "arch": "x86_64", "cpus": config.get("cpus", 4),
        "memory": 4 << 30, "disk": 100 << 30, "protected": False, "limaVersion": "fake",
        "sshConfigFile": str(directory / "ssh.config"), "config": config,
    }  # fmt: skip
    if running:
        data["sshLocalPort"] = int(os.environ.get("FAKE_LIMA_SSH_PORT", "22"))
        data["sshAddress"] = os.environ["FAKE_LIMA_SSH_ADDRESS"]
        data["hostAgentPID"] = os.getpid()
    return data


def boot(name: str) -> None:
    config = json.loads((home() / name / "lima.yaml").read_text())
    scratch = Path(tempfile.mkdtemp(prefix="fake-lima-etc-ssh-"))
    try:
        for step in config.get("provision", []):
            if step.get("mode", "system") != "system":
                continue
            script = scratch.parent / f"{scratch.name}.sh"
            script.write_text(step["script"])
            run = 'mount --bind "$1" /etc/ssh && exec sh "$2"'
            subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", run,
                            "sh", str(scratch), str(script)], check=True)  # fmt: skip
            script.unlink()
        key = scratch / "ssh_host_ed25519_key"
        if key.exists():
            shutil.copyfile(key, os.environ["FAKE_LIMA_HOST_KEY"])
            port = int(os.environ.get("FAKE_LIMA_SSH_PORT", "22"))
            reload_sshd(int(os.environ["FAKE_LIMA_SSHD_PID"]), port)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def start(args: list[str]) -> int:
    name, files = None, []
    for arg in args:
        if arg.startswith("--name="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("--tty"):
            continue
        elif arg.startswith("-"):
            return fail(f"unknown flag: {arg}")
        else:
            files.append(arg)
    if name is None and len(files) == 1 and not files[0].endswith((".yaml", ".yml")):
        name, files = files[0], []
    if name is None or not NAME.match(name):
        return fail(f"invalid instance name {name!r}")
    directory = home() / name
    if files:
        if directory.exists():
            return fail(f"instance {name!r} already exists ({directory})")
        directory.mkdir(parents=True)
        shutil.copyfile(files[0], directory / "lima.yaml")
        (directory / "lima.yaml").chmod(0o600)
        user_key = home() / "_config" / "user"
        if not user_key.exists():
            user_key.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.environ["FAKE_LIMA_USER_KEY"], user_key)
            user_key.chmod(0o600)
    elif not directory.exists():
        return fail(f"instance {name!r} does not exist, run `limactl create {name}` first")
    save(name, "Running")
    boot(name)
    return 0


def listing(args: list[str]) -> int:
    as_json = "--json" in args
    names = [a for a in args if not a.startswith("-")]
    root = home()
    found = root.iterdir() if root.exists() else iter(())
    present = sorted(p.name for p in found if (p / "lima.yaml").exists())
    if names:
        missing = [n for n in names if n not in present]
        if missing:
            return fail(f"unmatched instances: {missing}")
        present = names
    for name in present:
        data = instance(name)
        if as_json:
            sys.stdout.write(json.dumps(data) + "\n")
        else:
            sys.stdout.write(f"{name}\t{data['status']}\n")
    return 0


def stop(args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    if len(names) != 1 or not (home() / names[0] / "lima.yaml").exists():
        return fail(f"instance {names} not found")
    save(names[0], "Stopped")
    return 0


def delete(args: list[str]) -> int:
    force = "--force" in args or "-f" in args
    for name in (a for a in args if not a.startswith("-")):
        directory = home() / name
        if not (directory / "lima.yaml").exists():
            return fail(f"instance {name!r} not found")
        if state(name)["status"] == "Running" and not force:
            return fail("expected status Stopped, got Running (hint: try --force)")
        shutil.rmtree(directory)
    return 0


def shell(args: list[str]) -> int:
    name, *command = args
    data = instance(name)
    if data["status"] != "Running":
        return fail(f"instance {name!r} is stopped, run `limactl start {name}` to start")
    # As limactl does: ssh with the user key and no host key checking.
    ssh = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-i", str(home() / "_config" / "user"), "-p", str(data["sshLocalPort"]),
           f"{data['config']['user']['name']}@{data['sshAddress']}", *command]  # type: ignore[index]  # fmt: skip
    return subprocess.run(ssh).returncode


def main(argv: list[str]) -> int:
    if not argv:
        return fail("no command")
    commands = {"start": start, "list": listing, "ls": listing, "stop": stop,
                "delete": delete, "remove": delete, "rm": delete, "shell": shell}  # fmt: skip
    command = commands.get(argv[0])
    if command is None:
        return fail(f'unknown command {argv[0]!r} for "limactl"')
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
