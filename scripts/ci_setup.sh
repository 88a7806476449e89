#!/usr/bin/env bash
# CI set-up for the web tests: Chromium (the headless browser tests, driven by Playwright from
# requirements-dev.txt through executable_path: never `playwright install`) and Node.js
# (node --test tests/js/). Installs Debian's chromium with apt-get when no Chromium
# is found (needs root); fails when node is missing and cannot be installed, since
# tests/web/test_web_block_spec.py and tests/js/ need it. Safe to run repeatedly.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium || have chromium-browser || have google-chrome; then
  echo "ci_setup: chromium present"
else
  if [ "$(id -u)" -ne 0 ]; then
    echo "ci_setup: chromium is missing and this is not root; run: sudo apt-get update && sudo apt-get install -y chromium" >&2
    exit 1
  fi
  if ! have apt-get; then
    echo "ci_setup: chromium is missing and apt-get is not available on this machine" >&2
    exit 1
  fi
  echo "ci_setup: installing chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

if ! have node && [ "$(id -u)" -eq 0 ] && have apt-get; then
  echo "ci_setup: installing nodejs with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs >/dev/null
fi
if ! have node; then
  echo "ci_setup: node (Node.js >= 18) is missing; install it (Debian: apt-get install -y nodejs)" >&2
  exit 1
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 18 ]; then
  echo "ci_setup: node $(node --version) is too old for 'node --test'; need >= 18" >&2
  exit 1
fi
echo "ci_setup: node $(node --version)"
