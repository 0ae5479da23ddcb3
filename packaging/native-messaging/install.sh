#!/bin/sh
# Installs the native-messaging host manifest for Chromium, Chrome and/or Firefox.
#
#   install.sh [--system] HOST_PATH [chromium|chrome|firefox ...]
#
# HOST_PATH is the absolute path of the passmesh-native-host binary. Without browser names all three
# are installed. Per user by default (~/.config/..., ~/.mozilla/...); --system writes to /etc and
# /usr/lib/mozilla (run as root).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
system=no
if [ "${1:-}" = "--system" ]; then system=yes; shift; fi
host=${1:?usage: install.sh [--system] HOST_PATH [chromium|chrome|firefox ...]}
shift
case "$host" in /*) ;; *) echo "HOST_PATH must be absolute" >&2; exit 2 ;; esac
[ -x "$host" ] || { echo "$host is not executable" >&2; exit 2; }
[ $# -gt 0 ] || set -- chromium chrome firefox
for browser in "$@"; do
  case "$browser:$system" in
    chromium:no) dir="$HOME/.config/chromium/NativeMessagingHosts" ;;
    chromium:yes) dir=/etc/chromium/native-messaging-hosts ;;
    chrome:no) dir="$HOME/.config/google-chrome/NativeMessagingHosts" ;;
    chrome:yes) dir=/etc/opt/chrome/native-messaging-hosts ;;
    firefox:no) dir="$HOME/.mozilla/native-messaging-hosts" ;;
    firefox:yes) dir=/usr/lib/mozilla/native-messaging-hosts ;;
    *) echo "unknown browser $browser" >&2; exit 2 ;;
  esac
  mkdir -p "$dir"
  sed "s|@HOST_PATH@|$host|" "$here/com.passmesh.native.$browser.json" > "$dir/com.passmesh.native.json"
  echo "installed $dir/com.passmesh.native.json"
done
