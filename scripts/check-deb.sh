#!/usr/bin/env bash
# Builds the amd64 Debian package of smoker-install (cargo-deb, `[package.metadata.deb]` in
# Cargo.toml), installs it for real with `dpkg -i` on this machine (dpkg has no throwaway
# root), and checks what an operator gets: `smoker-install --version` from /usr/bin, the
# installed units through `systemd-analyze verify`, the udev rule, the /etc/smoker skeleton
# with its modes (host.toml 0600), the journal drop-in, the man page and the deploy wrapper.
# The package is purged afterwards, also on failure; a machine where it is installed already
# is refused rather than changed. Needs root (CI runs as root), cargo-deb (scripts/ci-tools.sh)
# and systemd-analyze (Debian package systemd).
set -euo pipefail
cd "$(dirname "$0")/.."
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
say() { printf '==> %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || die "run as root: the package is installed with dpkg -i"
command -v dpkg >/dev/null || die "dpkg is missing: this check needs a Debian machine"
command -v systemd-analyze >/dev/null || die "systemd-analyze is missing (Debian package systemd; scripts/install-deps.sh installs it)"
cargo deb --version >/dev/null 2>&1 || die "cargo-deb is missing (scripts/ci-tools.sh installs it)"
if dpkg-query -W -f='${Status}' smoker-install 2>/dev/null | grep -q "install ok installed"; then
  die "the smoker-install package is already installed on this machine; this check installs and purges it, so remove it first (dpkg --purge smoker-install)"
fi

say "cargo deb (amd64)"
out=$(mktemp -d)
trap 'dpkg --purge smoker-install >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
# The dev profile: what is checked here is the package (its files, modes, units, install and
# purge), not the optimisation of the binary, and the suite has built that profile already
# (a release build would add minutes to every CI run). The release workflows build the
# packages they publish with the release profile.
cargo deb --profile dev --locked --package smoker-release --output "$out/" >/dev/null
deb=$(find "$out" -name 'smoker-install_*_amd64.deb' | head -n1)
[ -n "$deb" ] || die "cargo deb made no smoker-install_*_amd64.deb"
[ "$(dpkg-deb --field "$deb" Package)" = smoker-install ] || die "$deb is not the smoker-install package"
contents=$(dpkg-deb --contents "$deb" | awk '{print $NF}')
for want in ./usr/bin/smoker-install ./usr/lib/systemd/system/smoker-recover.service \
  ./usr/lib/systemd/system/smoker-usb@.service ./usr/lib/udev/rules.d/99-smoker-usb.rules \
  ./etc/smoker/host.toml ./etc/smoker/keys/README ./etc/systemd/journald.conf.d/50-smoker-persistent-journal.conf \
  ./usr/share/man/man8/smoker-install.8.gz ./usr/sbin/smoker-deploy; do
  grep -qxF "$want" <<<"$contents" || die "$deb lacks $want"
done
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
grep -qxF /etc/smoker/host.toml <<<"$conffiles" ||
  die "/etc/smoker/host.toml is not a conffile (an upgrade would overwrite the operator's edits)"

say "dpkg -i $(basename "$deb")"
dpkg -i "$deb" >/dev/null

say "the installed package"
v=$(/usr/bin/smoker-install --version) || die "/usr/bin/smoker-install --version failed"
want="smoker-install $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
[ "$v" = "$want" ] || die "/usr/bin/smoker-install --version printed '$v', expected '$want'"
mode() { stat -c '%a %U:%G' "$1"; }
[ "$(mode /etc/smoker/host.toml)" = "600 root:root" ] || die "/etc/smoker/host.toml is $(mode /etc/smoker/host.toml), not 600 root:root"
[ "$(mode /etc/smoker/keys)" = "755 root:root" ] || die "/etc/smoker/keys is $(mode /etc/smoker/keys)"
for d in /var/lib/smoker /var/log/smoker /var/log/journal; do
  [ -d "$d" ] || die "postinst did not create $d"
done
grep -qx 'Storage=persistent' /etc/systemd/journald.conf.d/50-smoker-persistent-journal.conf || die "the journal drop-in does not ask for persistent storage"
[ "$(mode /usr/sbin/smoker-deploy)" = "755 root:root" ] || die "/usr/sbin/smoker-deploy is $(mode /usr/sbin/smoker-deploy)"
[ -s /usr/share/man/man8/smoker-install.8.gz ] || die "the man page is missing"
if command -v man >/dev/null; then
  page=$(man -l /usr/share/man/man8/smoker-install.8.gz 2>/dev/null) || die "the man page does not render"
  grep -q 'SMOKER-INSTALL' <<<"$page" || die "the man page does not render"
fi

say "systemd-analyze verify (installed units)"
# The units run after docker.service: use the engine's unit where Docker is installed.
[ -e /usr/lib/systemd/system/docker.service ] || [ -e /lib/systemd/system/docker.service ] ||
  die "docker.service is not installed here (the units require it); install docker.io"
msgs=$(systemd-analyze verify /usr/lib/systemd/system/smoker-recover.service \
  /usr/lib/systemd/system/smoker-usb@sda1.service 2>&1) || { printf '%s\n' "$msgs" >&2; die "systemd-analyze verify failed"; }
# Only messages about our own units count (other units on this machine are not ours to judge).
ours=$(printf '%s\n' "$msgs" | grep -E 'smoker-(recover|usb@)' || true)
[ -z "$ours" ] || { printf '%s\n' "$ours" >&2; die "systemd-analyze verify reported problems in the installed units"; }

say "dpkg --purge smoker-install"
dpkg --purge smoker-install >/dev/null
[ ! -e /usr/bin/smoker-install ] || die "/usr/bin/smoker-install is still there after purge"
echo "Debian package OK: $(basename "$deb") installs, runs ($v), its units verify, /etc/smoker/host.toml is 0600"
