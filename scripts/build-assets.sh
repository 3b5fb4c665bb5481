#!/usr/bin/env bash
# Fetches the dashboard's front-end libraries from npm at exact versions and copies their
# browser builds and licences into src/hal9999/dashboard/static/vendor/ (committed, so the wheel
# ships them; the dashboard loads nothing from a CDN). Re-run after changing a version below.
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=src/hal9999/dashboard/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# package@version  then the files to copy out of its tarball (paths inside package/)
fetch() {
  local spec=$1; shift
  local name=${spec%@*}; name=${name#@}; name=${name//\//-}
  (cd "$work" && npm pack -q "$spec" >/dev/null)
  local tgz; tgz=$(ls "$work"/*.tgz)
  mkdir -p "$work/$name" "$vendor/$name"
  tar -xzf "$tgz" -C "$work/$name"
  rm -f "$tgz"
  for file in "$@"; do
    cp "$work/$name/package/$file" "$vendor/$name/$(basename "$file")"
  done
  cp "$work/$name/package/LICENSE"* "$vendor/$name/" 2>/dev/null \
    || { echo "build-assets: $spec ships no LICENSE file" >&2; exit 1; }
  echo "$spec" > "$vendor/$name/VERSION"
}

rm -rf "$vendor"
mkdir -p "$vendor"
fetch @xterm/xterm@6.0.0 lib/xterm.js css/xterm.css
fetch @xterm/addon-fit@0.11.0 lib/addon-fit.js
fetch uplot@1.6.32 dist/uPlot.iife.min.js dist/uPlot.min.css
echo "build-assets: vendored into $vendor"
