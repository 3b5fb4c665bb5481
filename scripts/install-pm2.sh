#!/usr/bin/env bash
# Installs PM2 (the `pm2` process manager's daemon and CLI) from npm at a pinned version,
# into /usr/local/lib/hal-pm2, linked as /usr/local/bin/pm2. Idempotent: a PM2 already at
# the pinned version is kept. Needs node and npm (the agent CLIs need them too).
set -euo pipefail

PM2_VERSION=7.0.4
PREFIX=${PM2_PREFIX:-/usr/local/lib/hal-pm2}
LINK=${PM2_LINK:-/usr/local/bin/pm2}
manifest="$PREFIX/node_modules/pm2/package.json"

installed=""
[ -f "$manifest" ] && installed=$(node -p "require(process.argv[1]).version" "$manifest" 2>/dev/null || true)
if [ "$installed" != "$PM2_VERSION" ]; then
  command -v npm >/dev/null 2>&1 || { echo "install-pm2: npm is missing (apt-get install npm)" >&2; exit 1; }
  echo "install-pm2: npm install pm2@$PM2_VERSION into $PREFIX"
  mkdir -p "$PREFIX"
  npm install --silent --no-audit --no-fund --prefix "$PREFIX" "pm2@$PM2_VERSION" >/dev/null
fi
ln -sfn "$PREFIX/node_modules/.bin/pm2" "$LINK"
