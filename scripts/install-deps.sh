#!/usr/bin/env bash
# Installs everything the build, the main job and the test suite need on a Debian machine,
# and makes sure the Docker daemon answers. Idempotent; fails loudly when something is missing.
set -euo pipefail

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "run as root or install sudo"
  SUDO="sudo"
fi

# Debian packages: minisign (signature interop), zstd + GNU tar (bundle inspection), the
# loopback registry, curl, GNU time (benchmarks), git, iproute2 (offline tests bring up loopback
# in a network namespace of their own), and Docker with a compose front end.
pkgs=(minisign zstd tar docker-registry curl time git ca-certificates iproute2)
# systemd-analyze (unit checks: scripts/check-pi-units.sh, scripts/check-deb.sh) and dpkg-dev
# (dpkg-shlibdeps, which cargo-deb uses for the package's dependencies).
pkgs+=(systemd dpkg-dev)
command -v docker >/dev/null || pkgs+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  pkgs+=(docker-compose)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The registry package starts a system service on :5000 on some systems; the tests run their
# own registries on free loopback ports, so the packaged one is not needed.

# Docker daemon.
if ! docker info >/dev/null 2>&1; then
  say "starting the Docker daemon"
  if command -v systemctl >/dev/null && systemctl start docker 2>/dev/null; then :
  elif command -v service >/dev/null && service docker start >/dev/null 2>&1; then :
  else
    nohup dockerd >/tmp/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (see 'docker info')"

# Rust: the stable toolchain the workspace declares (rust-version in Cargo.toml).
command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup, stable >= 1.95)"
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 ||
    die "the Rust component $c is missing and could not be added (rustup component add $c)"
done
cargo fmt --version >/dev/null 2>&1 || die "cargo fmt does not run"
cargo clippy --version >/dev/null 2>&1 || die "cargo clippy does not run"
if ! rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-gnu; then
  [ "$(uname -m)" = x86_64 ] || die "tests build a static x86_64 test service; run them on x86_64"
fi

for c in minisign zstd docker-registry curl git; do
  command -v "$c" >/dev/null || die "$c is still missing after installation"
done
if docker compose version >/dev/null 2>&1; then
  say "compose: docker compose $(docker compose version --short)"
fi
if command -v docker-compose >/dev/null; then
  say "compose: docker-compose $(docker-compose version --short)"
fi
say "docker $(docker version --format '{{.Server.Version}}'), minisign $(minisign -v 2>&1 | head -1)"
