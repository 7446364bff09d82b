#!/usr/bin/env bash
# Installs the Debian packages Chatlog builds and tests with, skipping what is
# already there. Needs root or sudo; safe to run again.
set -euo pipefail

pkgs=(
  build-essential pkg-config clang libclang-rt-14-dev
  libevent-dev libxxhash-dev libzstd-dev
  libprotobuf-c-dev protobuf-c-compiler
  libssl-dev libjwt-dev libjansson-dev
  python3 python3-websockets
  # The web client's browser test (tests/web) drives Debian's chromium with
  # playwright-core; chromium is large (~350 MB installed). DejaVu gives its
  # screenshots readable text.
  chromium fonts-dejavu-core
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# Node.js runs the end-to-end tests (ws + protobufjs from npm); any node >= 18
# will do, Debian's if none is there.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
