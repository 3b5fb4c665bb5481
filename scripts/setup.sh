#!/usr/bin/env bash
# Installs what hal needs on a fresh Debian machine (as root, or with sudo) and the project
# itself into .venv. Idempotent: re-running installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in bwrap:bubblewrap tmux:tmux git:git ps:procps prlimit:util-linux \
    setpriv:util-linux slirp4netns:slirp4netns strace:strace \
    chromium:chromium; do  # chromium: the dashboard's browser tests; strace: benchmark counts
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: apt-get install ${need[*]}"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${need[@]}" >/dev/null
fi

# The ssh provider's tests start their own OpenSSH sshd in a network namespace (tests/sshd.py);
# the package must not start one on this machine, so services are refused while it installs.
if [ ! -x /usr/sbin/sshd ] || ! command -v ip >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  policy=/usr/sbin/policy-rc.d made=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null; $sudo chmod 755 "$policy"; made=1
  fi
  echo "setup: apt-get install openssh-server iproute2"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q openssh-server iproute2 >/dev/null
  [ -z "$made" ] || $sudo rm -f "$policy"
fi

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: pip install uv"
  python3 -m pip install -q uv 2>/dev/null || python3 -m pip install -q --break-system-packages uv
fi
# Bytecode compiled up front: with PYTHONDONTWRITEBYTECODE set (as on some CI images) every
# `hal` start would otherwise recompile pydantic, click and hal from source (~250 ms).
uv sync -q --frozen --compile-bytecode
.venv/bin/python -m compileall -q src/hal9999 >/dev/null
