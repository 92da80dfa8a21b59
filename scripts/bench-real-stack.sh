#!/usr/bin/env bash
# The three-service stack (database with a bind-mounted init directory, backend, frontend,
# service_healthy chains, 10 s health checks) under both Compose front ends, against plain
# `compose up -d` of the same files. Prints one block per front end (see benches/real_stack.rs).
# Usage: scripts/bench-real-stack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench real_stack
