#!/usr/bin/env bash
# Install the coding-agent CLIs hal runs, at pinned versions, where a sandbox that binds only
# the host's /usr read-only can run them.
#
#   sudo scripts/install-agents.sh                 # all of them
#   sudo scripts/install-agents.sh claude aider    # a subset
#
# Agents and where they land:
#   claude    npm @anthropic-ai/claude-code   /usr/bin/claude   (native binary, see below)
#   codex     npm @openai/codex               /usr/bin/codex    (node shim + native binary)
#   opencode  npm opencode-ai                 /usr/bin/opencode (native binary)
#   gemini    npm @google/gemini-cli          /usr/bin/gemini   (node script)
#   aider     PyPI aider-chat, in a venv made with Debian's /usr/bin/python3 at
#             /usr/local/lib/hal-agents/aider, linked as /usr/local/bin/aider. The host's main
#             python may live outside /usr (pyenv under /root), which a sandbox cannot see.
#   goose     NOT installable here: it ships as GitHub release binaries (download_cli.sh) or
#             `cargo install goose-cli` from crates.io; neither host is reachable from these
#             machines. PyPI `goose-sdk` is a Python binding library (no CLI) and npm
#             `goose-cli` is an unrelated database-migration wrapper.
#
# The npm packages bring their native binaries as optionalDependencies from the npm
# registry itself; nothing else is downloaded. Claude Code 2.1.x declares node >=22 and npm
# warns EBADENGINE on node 20, but what runs is the native binary, so node's version does not
# matter. Its postinstall (and opencode's) links that binary into place: allow both.
#
# Idempotent: an agent already at its pinned version is skipped. Measured from scratch on a
# 2-core machine: npm agents ~25 s, aider ~130 s (resolving and unpacking ~100 wheels).
set -euo pipefail

# Pinned versions. Bump deliberately: the captured outputs in tests/agents/captured/ were
# recorded with exactly these (re-run `python -m tests.llm_server.capture` after a bump).
CLAUDE_VERSION=2.1.330
CODEX_VERSION=0.169.0
OPENCODE_VERSION=1.18.33
GEMINI_VERSION=0.61.0
AIDER_VERSION=0.86.2

NPM_PREFIX=${NPM_PREFIX:-/usr}
AIDER_HOME=${AIDER_HOME:-/usr/local/lib/hal-agents/aider}
AIDER_LINK=${AIDER_LINK:-/usr/local/bin/aider}
SYSTEM_PYTHON=${SYSTEM_PYTHON:-/usr/bin/python3}

log() { printf '[install-agents] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

declare -A NPM_PACKAGE=(
  [claude]="@anthropic-ai/claude-code@${CLAUDE_VERSION}"
  [codex]="@openai/codex@${CODEX_VERSION}"
  [opencode]="opencode-ai@${OPENCODE_VERSION}"
  [gemini]="@google/gemini-cli@${GEMINI_VERSION}"
)

# The installed version of a global npm package, or nothing.
npm_installed_version() {
  local name=$1 manifest="${NPM_PREFIX}/lib/node_modules/$1/package.json"
  [[ -f $manifest ]] || return 0
  node -p "require(process.argv[1]).version" "$manifest" 2>/dev/null || true
}

install_npm_agents() {
  local wanted=() agent spec name version
  for agent in "$@"; do
    spec=${NPM_PACKAGE[$agent]}
    name=${spec%@*}
    version=${spec##*@}
    if [[ $(npm_installed_version "$name") == "$version" ]]; then
      log "$agent: $name $version already installed"
    else
      wanted+=("$spec")
    fi
  done
  ((${#wanted[@]})) || return 0
  command -v npm >/dev/null || die "npm not found: install nodejs and npm first"
  log "npm install -g ${wanted[*]}"
  npm install --global --prefix "$NPM_PREFIX" --no-fund --no-audit \
    --allow-scripts=@anthropic-ai/claude-code --allow-scripts=opencode-ai "${wanted[@]}"
}

aider_installed_version() {
  [[ -x $AIDER_HOME/bin/python ]] || return 0
  "$AIDER_HOME/bin/python" -c \
    'import importlib.metadata as m; print(m.version("aider-chat"))' 2>/dev/null || true
}

install_aider() {
  if [[ $(aider_installed_version) == "$AIDER_VERSION" && -x $AIDER_LINK ]]; then
    log "aider: aider-chat $AIDER_VERSION already installed"
    return 0
  fi
  [[ -x $SYSTEM_PYTHON ]] || die "$SYSTEM_PYTHON not found (aider needs a python under /usr)"
  if ! "$SYSTEM_PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    log "installing python3-venv"
    apt-get update -qq && apt-get install -y -qq python3-venv
  fi
  log "aider: venv at $AIDER_HOME, pip install aider-chat==$AIDER_VERSION"
  [[ -x $AIDER_HOME/bin/pip ]] || "$SYSTEM_PYTHON" -m venv "$AIDER_HOME"
  "$AIDER_HOME/bin/pip" install --quiet --no-input --disable-pip-version-check \
    "aider-chat==${AIDER_VERSION}"
  ln -sfn "$AIDER_HOME/bin/aider" "$AIDER_LINK"
}

# Fail loudly when a CLI does not start: a half-installed agent shows up here, not in a run.
check() {
  local agent=$1 out
  out=$(HOME=$CHECK_HOME "$agent" --version 2>/dev/null | tail -n 1) \
    || die "$agent --version failed after install"
  log "$agent: $out"
}

main() {
  [[ $(id -u) == 0 ]] || die "run as root: agents go under /usr"
  local agents=("$@") npm_agents=() agent
  ((${#agents[@]})) || agents=(claude codex opencode gemini aider)
  for agent in "${agents[@]}"; do
    case $agent in
      claude | codex | opencode | gemini) npm_agents+=("$agent") ;;
      aider) ;;
      goose) die "goose cannot be installed from the registries these machines reach" ;;
      *) die "unknown agent '$agent' (known: claude codex opencode gemini aider)" ;;
    esac
  done
  local started=$SECONDS
  CHECK_HOME=$(mktemp -d)
  trap 'rm -rf "$CHECK_HOME"' EXIT
  ((${#npm_agents[@]} == 0)) || install_npm_agents "${npm_agents[@]}"
  [[ " ${agents[*]} " != *" aider "* ]] || install_aider
  for agent in "${agents[@]}"; do check "$agent"; done
  log "done in $((SECONDS - started)) s"
}

main "$@"
