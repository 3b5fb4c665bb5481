#!/usr/bin/env bash
# Runs the sandbox-boundary tests (tests/security) again as an ordinary user: hal run by
# root and hal run by a user build the sandbox differently (see docs/security.md), and both
# must hold. Needs root to create that user; prints why and does nothing otherwise.
# Idempotent: the user is created once, the copy of the tree is fresh each time.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test-nonroot: skipped (not root: the run above already was an ordinary user's)"
  exit 0
fi
user=halci
id -u "$user" >/dev/null 2>&1 || useradd --system --user-group --create-home \
  --home-dir "/var/lib/$user" --shell /bin/bash "$user"

# host-mode networking for an ordinary user needs /dev/net/tun open to it: its usual mode
# (some machines ship it 0600, and the test would only see the clear refusal).
[ -c /dev/net/tun ] && chmod 0666 /dev/net/tun

# The checkout may sit under a directory the user cannot enter (/root): test a copy of
# the working tree, with a venv of its own (the root venv's interpreter may be private).
work=$(mktemp -d /tmp/hal-nonroot.XXXXXX)
trap 'rm -rf "$work"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"
# uv's own binary: a shim (pyenv's is a script calling into /root) does not run as the user.
uv_bin=""
for found in "$(python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null)" \
    "$(command -v uv)" "$(pyenv which uv 2>/dev/null)"; do
  if [ -n "$found" ] && [ "$(head -c 4 "$found" 2>/dev/null)" = "$(printf '\177ELF')" ]; then
    uv_bin=$found; break
  fi
done
[ -n "$uv_bin" ] || { echo "test-nonroot: no uv binary found (pip install uv)" >&2; exit 1; }
install -m 755 "$uv_bin" "$work/.uv"
chmod 755 "$work"
chown -R "$user:$user" "$work"

# The package index, proxy and CA settings the root run uses, and nothing else of its env.
passed=()
while IFS= read -r name; do passed+=("$name=${!name}"); done < <(
  compgen -e | grep -E '^(UV_|PIP_|SSL_CERT_|REQUESTS_CA_BUNDLE$|CURL_CA_BUNDLE$|(HTTPS?|NO|ALL)_PROXY$|(https?|no|all)_proxy$)' || true)
as_user() {
  runuser -u "$user" -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="/var/lib/$user" \
    LANG=C.UTF-8 CI="${CI:-}" UV_CACHE_DIR="/var/lib/$user/.cache/uv" "${passed[@]}" "$@"
}
python=""
for candidate in /usr/bin/python3.11 /usr/local/bin/python3.11 /usr/bin/python3; do
  if as_user "$candidate" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    python=$candidate; break
  fi
done
# Without an interpreter the user may run, uv fetches one.
as_user sh -c "cd '$work' && ./.uv sync -q --frozen ${python:+--python '$python'}"
# cgroup tests need a delegated hierarchy, which an ordinary user does not have here.
as_user sh -c 'cd "$1" && shift && exec .venv/bin/python -m pytest tests/security -q \
  -m "not cgroup" -p no:cacheprovider "$@"' sh "$work" "$@"
