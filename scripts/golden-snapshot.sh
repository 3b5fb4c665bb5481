#!/usr/bin/env bash
# Prepares a fresh Debian 12 cloud machine to become hal's golden snapshot (the
# `digitalocean` and `morph` providers boot every sandbox from it). Run as root ON THE
# MACHINE, then power it off and snapshot it (docs/providers.md). Idempotent.
#
#   AGENTS="@anthropic-ai/claude-code @openai/codex" bash golden-snapshot.sh [USER]
#
# Nothing secret is baked in: hal's login key and each machine's SSH host key arrive with
# the machine's cloud-init user data, and the agents' credentials stay on hal's host.
set -euo pipefail
user="${1:-agent}"
agents="${AGENTS:-@anthropic-ai/claude-code}"
[ "$(id -u)" -eq 0 ] || { echo "golden-snapshot: run as root" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q git tmux bubblewrap curl ca-certificates procps nodejs npm cloud-init

id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
install -d -m 700 -o "$user" -g "$user" "/home/$user/.ssh"
# shellcheck disable=SC2086  # a list of npm package names
[ -z "$agents" ] || npm install -g --no-fund --no-audit $agents

# The next boot must run hal's user data and take hal's host key: forget this boot's.
cloud-init clean --logs
rm -f /etc/ssh/ssh_host_*
: > "/home/$user/.ssh/authorized_keys"
chown "$user:$user" "/home/$user/.ssh/authorized_keys"
chmod 600 "/home/$user/.ssh/authorized_keys"
echo "golden-snapshot: ready; power off and take the snapshot now"
