#!/usr/bin/env bash
# Installs what hal needs on a fresh Debian machine (as root, or with sudo) and the project
# itself into .venv. Idempotent: re-running installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in bwrap:bubblewrap tmux:tmux git:git ps:procps prlimit:util-linux \
    setpriv:util-linux slirp4netns:slirp4netns strace:strace gcc:gcc musl-gcc:musl-tools \
    chromium:chromium tcsh:tcsh fish:fish; do  # chromium: the dashboard's browser tests;
    # strace: benchmark counts; tcsh, fish: an ssh host's login shell (test_ssh_login_shell)
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ -f /usr/include/stdio.h ] || need+=(libc6-dev)  # headers and libc.a for build/hal-drop
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

# A root hal's bwrap sandboxes switch to their uid with this static program (scripts/hal-drop.c:
# setpriv's work without its loader and locale, ~2 ms less per command); without it, setpriv.
# Every sandbox command starts with scripts/hal-launch.c (the launcher script's work without
# a shell); without it, sh. Both are linked with musl where there (a static glibc program
# spends ~0.3 ms more starting, twice a command), else glibc. Each is rebuilt only when its
# source is newer; a failure leaves the fallback in use, never a broken file.
cc=gcc; command -v musl-gcc >/dev/null 2>&1 && cc=musl-gcc
for prog in hal-drop hal-launch; do
  # Both include scripts/hal-drop.h (the uid switch).
  if [ ! -x "build/$prog" ] || [ "scripts/$prog.c" -nt "build/$prog" ] ||
    [ scripts/hal-drop.h -nt "build/$prog" ]; then
    mkdir -p build
    if $cc -static -O2 -Wall -Werror -o "build/$prog.tmp" "scripts/$prog.c"; then
      chmod 755 "build/$prog.tmp" && mv "build/$prog.tmp" "build/$prog"
    else
      rm -f "build/$prog.tmp"; echo "setup: could not build build/$prog; its fallback will be used"
    fi
  fi
done

# The tmux server of each process loads this library (scripts/hal-noutmp.c) so that its pane
# writes no utmp login through libutempter's setgid helper; without it, tmux does as usual.
# A shared library for tmux's own loader: gcc (glibc), never musl.
if [ ! -f build/hal-noutmp.so ] || [ scripts/hal-noutmp.c -nt build/hal-noutmp.so ]; then
  mkdir -p build
  if gcc -shared -fPIC -O2 -Wall -Werror -o build/hal-noutmp.so.tmp scripts/hal-noutmp.c; then
    chmod 755 build/hal-noutmp.so.tmp && mv build/hal-noutmp.so.tmp build/hal-noutmp.so
  else
    rm -f build/hal-noutmp.so.tmp; echo "setup: could not build build/hal-noutmp.so; tmux will log panes to utmp"
  fi
fi

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: pip install uv"
  python3 -m pip install -q uv 2>/dev/null || python3 -m pip install -q --break-system-packages uv
fi
# Bytecode compiled up front: with PYTHONDONTWRITEBYTECODE set (as on some CI images) every
# `hal` start would otherwise recompile pydantic, click and hal from source (~250 ms).
uv sync -q --frozen --compile-bytecode
.venv/bin/python -m compileall -q src/hal9999 >/dev/null
