#!/usr/bin/env bash
# Installs Podman (Debian's) for the `docker` provider's tests and starts its Docker-compatible
# API service on a unix socket. Idempotent: installs nothing that is already there and starts
# no second service.
#
#   podman, runc        the engine; runc because crun fails on hybrid cgroup hosts
#   containers.conf     runtime runc, cgroupfs (no systemd here), explicit default ulimits
#
# The service listens on $HAL_PODMAN_SOCKET (default /run/hal-podman/podman.sock). A session's
# background processes end before CI runs, so the tests' fixture starts the service too when
# the socket does not answer (tests/providers/podman_service.py).
set -euo pipefail

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup-podman: apt-get install ${need[*]}"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    "${need[@]}" >/dev/null
fi

conf=/etc/containers/containers.conf
if ! grep -q "^# hal9999 v3" "$conf" 2>/dev/null; then
  echo "setup-podman: writing $conf (runc, cgroupfs, default ulimits)"
  $sudo mkdir -p /etc/containers
  $sudo tee "$conf" >/dev/null <<'CONF'
# hal9999 v3: runc (crun fails on hybrid cgroups), cgroupfs (no systemd), explicit ulimits.
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi

socket=${HAL_PODMAN_SOCKET:-/run/hal-podman/podman.sock}
if [ "${HAL_PODMAN_NO_SERVICE:-}" != 1 ] && ! curl -sf --unix-socket "$socket" http://d/_ping >/dev/null 2>&1; then
  $sudo mkdir -p "$(dirname "$socket")"
  echo "setup-podman: podman system service on $socket"
  $sudo sh -c "nohup podman system service --time=0 unix://$socket >/dev/null 2>&1 &"
  for _ in $(seq 50); do
    curl -sf --unix-socket "$socket" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
