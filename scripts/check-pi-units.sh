#!/usr/bin/env bash
# Checks the Pi's systemd units (deploy/pi/*.service, *.timer) with `systemd-analyze verify`, in a
# scratch root so that the commands they run (/usr/local/bin/smoker-install, mount, …) and the
# units they order against (docker.service) need not be installed on this machine. Any message
# from the verifier (unknown key, bad specifier, missing command) fails the check. A unit
# that writes onto the USB stick by a shell redirection (which follows a link planted on the
# stick) fails it too: the stick's log is written by `smoker-install usb-log`.
set -euo pipefail
cd "$(dirname "$0")/.."

if grep -nE '>>?[[:space:]]*/run/smoker-usb' deploy/pi/*.service; then
  echo "error: a unit redirects output onto the USB stick (follows links there); use smoker-install usb-log" >&2
  exit 1
fi

command -v systemd-analyze >/dev/null || {
  echo "error: systemd-analyze is missing (Debian package systemd)" >&2
  exit 1
}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/bin"
printf '#!/bin/sh\n' >"$root/usr/local/bin/smoker-install"
chmod 755 "$root/usr/local/bin/smoker-install"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
for b in mkdir mount umount rmdir sh; do cp "$(command -v "$b")" "$root/bin/"; done
[ -e "$root/usr/lib/systemd/system/docker.service" ] ||
  printf '[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/sh -c "exit 0"\n' \
    >"$root/etc/systemd/system/docker.service"
cp deploy/pi/*.service deploy/pi/*.timer "$root/etc/systemd/system/"
units=()
for f in deploy/pi/*.service deploy/pi/*.timer; do
  u=${f##*/}
  case $u in *@.service) u=${u%@.service}@sda1.service ;; esac
  units+=("$u")
done
out=$(cd "$root/etc/systemd/system" && systemd-analyze verify --root="$root" "${units[@]}" 2>&1) || {
  printf '%s\n' "$out" >&2
  echo "error: systemd-analyze verify failed" >&2
  exit 1
}
if [ -n "$out" ]; then
  printf '%s\n' "$out" >&2
  echo "error: systemd-analyze verify reported problems in deploy/pi" >&2
  exit 1
fi
echo "systemd units OK: ${units[*]}"
