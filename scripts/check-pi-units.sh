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

# The udev rule: every line is made of known operators on quoted values (udevadm is not
# needed here, and `udevadm verify` only exists from systemd 254), and every rule that starts
# the unit matches USB storage by its filesystem label, never any USB partition.
rules=deploy/pi/99-smoker-usb.rules
grep -v -e '^#' -e '^[[:space:]]*$' "$rules" | while IFS= read -r line; do
  rest=$line
  while [ -n "$rest" ]; do
    tok=${rest%%, *}
    [ "$tok" = "$rest" ] && rest= || rest=${rest#*, }
    [[ $tok =~ ^[A-Z_]+(\{[A-Za-z_]+\})?(==|!=|=|\+=|-=|:=)\"[^\"]*\"$ ]] || {
      echo "error: $rules: cannot parse '$tok'" >&2
      exit 1
    }
  done
  case $line in *SYSTEMD_WANTS*smoker-usb@*) ;; *) continue ;; esac
  for need in 'ACTION=="add"' 'ENV{ID_BUS}=="usb"' 'ENV{ID_FS_LABEL}=="SMOKER"'; do
    case $line in *"$need"*) ;; *)
      echo "error: $rules: the rule starting smoker-usb@ does not match $need" >&2
      exit 1
      ;;
    esac
  done
done
grep -q 'SYSTEMD_WANTS.*smoker-usb@' "$rules" || {
  echo "error: $rules starts no smoker-usb@ unit" >&2
  exit 1
}
# Recovery needs no network: smoker-recover.service must not wait for it at boot.
if grep -nE '^(After|Wants|Requires)=.*network-online' deploy/pi/smoker-recover.service; then
  echo "error: smoker-recover.service waits for network-online.target; recovery needs no network" >&2
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
