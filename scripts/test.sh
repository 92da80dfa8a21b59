#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test of the workspace.
# Fails (non-zero) when Docker, the registry or minisign is missing: nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --workspace --locked --bins
cargo test --workspace --locked --no-fail-fast
