#!/usr/bin/env bash
# Debian's chromium for the Playwright browser tests (`make test` runs this before pytest).
#
#   scripts/install_chromium.sh           install it if missing (as root, or with passwordless sudo);
#                                         where that is impossible, say what to run and exit 0 anyway:
#                                         the browser tests then fail with their own message
#   scripts/install_chromium.sh --check   install nothing: say whether chromium is there and what the
#                                         script would do; exit 0 if it is there, 1 if not
#
# CHROMIUM=/path/to/chromium overrides where it is looked for (default: `chromium` on PATH, else
# /usr/bin/chromium, as tests/conftest.py does), e.g. CHROMIUM=/nonexistent ... --check.
set -uo pipefail

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

found() {
  if [ -n "${CHROMIUM:-}" ]; then
    [ -x "$CHROMIUM" ]
  else
    command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]
  fi
}

what="${CHROMIUM:-chromium}"
if found; then
  [ "$check_only" = 1 ] && echo "chromium: found ($what)"
  exit 0
fi

APT_CMD="apt-get update && apt-get install -y chromium"
# One clear message: what is missing, why it was not installed, what to run.
manual() {
  local hint
  if ! command -v apt-get >/dev/null 2>&1; then
    hint="Install chromium with this system's package manager, put it on PATH as 'chromium'"
  elif [ "$(id -u)" = 0 ]; then
    hint="Install it with:  $APT_CMD"
  else
    hint="Install it with:  sudo sh -c '$APT_CMD'"
  fi
  echo "NOTE: the browser tests need Debian's chromium, which is not installed ($what not found)."
  echo "      $1"
  echo "      $hint, then run 'make test' again."
}

# How we would install it: directly as root, with passwordless sudo, or not at all.
if ! command -v apt-get >/dev/null 2>&1; then
  how=none; why="apt-get is not available here (not a Debian-like system)."
elif [ "$(id -u)" = 0 ]; then
  how=root
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  how=sudo
else
  how=none; why="Not root and no passwordless sudo, so it cannot be installed from here."
fi

if [ "$check_only" = 1 ]; then
  case "$how" in
    root) echo "chromium: missing ($what); would run as root: $APT_CMD" ;;
    sudo) echo "chromium: missing ($what); would run with sudo -n: $APT_CMD" ;;
    none) manual "$why" ;;
  esac
  exit 1
fi

case "$how" in
  root) sudo=() ;;
  sudo) sudo=(sudo -n) ;;
  none) manual "$why"; exit 0 ;;
esac

echo "Installing Debian chromium for the browser tests: $APT_CMD"
if "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
   && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
   && found; then
  echo "chromium: installed"
else
  manual "The automatic install failed (see apt-get's output above)."
fi
exit 0
