#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test of the workspace.
# Fails (non-zero) when Docker, the registry or minisign is missing: nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Style and structure first: they fail in seconds.
echo "==> cargo fmt --check"; cargo fmt --all --check || { echo "error: cargo fmt found unformatted code (run cargo fmt)" >&2; exit 1; }
echo "==> module cycles"; python3 scripts/check-module-cycles.py
echo "==> cargo clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked --bins
cargo test --workspace --locked --no-fail-fast
# Release engineering, each step failing the run with its own message:
# the Pi's installer cross-built for armv7 (static, Debian's toolchain, installed when missing),
# its library tests and a CLI smoke test against the real Docker engine under qemu-arm-static;
echo "==> cargo xtask armv7"; time cargo xtask armv7
# dist's config and generated release workflow (dist plan fails when they disagree), every
# workflow through actionlint, and the Pi's systemd units.
./scripts/ci-tools.sh
# The install scripts' PyPI steps with Debian's own python3 (a stock runner has no other).
./scripts/check-debian-python.sh
echo "==> cargo deny"; cargo deny check licenses bans sources || { echo "error: cargo deny found a dependency deny.toml does not allow" >&2; exit 1; }
echo "==> dist plan"; dist plan || { echo "error: dist plan failed" >&2; exit 1; }
echo "==> actionlint"; target/ci-venv/bin/actionlint .github/workflows/*.yml || { echo "error: actionlint found problems" >&2; exit 1; }
./scripts/check-pi-units.sh
# The deploy workflows' scripts and the cloud hosts' forced command.
./scripts/check-deploy-scripts.sh
# The Debian package: built, installed with dpkg -i, run, its units verified, purged.
./scripts/check-deb.sh
