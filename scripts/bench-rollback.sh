#!/usr/bin/env bash
# Rollback and apply overhead on the local Docker engine (a benchmark, not a test).
#   - rollback: the switch itself, and the time until the stack is healthy again,
#     against a plain `compose up -d` of the same files followed by waiting for /health;
#   - apply: total wall time against the compose-up and health-gate steps inside it.
# Usage: scripts/bench-rollback.sh [ROUNDS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
rounds=${1:-5}
say() { printf '==> %s\n' "$*" >&2; }
cargo build -q --release --locked -p smoker-release -p xtask
xtask=$top/target/release/xtask
install=$top/target/release/smoker-install
work=$(mktemp -d)
key=$work/release.key
"$xtask" keygen --no-password --secret-key "$key" --public-key "$work/release.pub" >/dev/null
DEMO_PROJECT=smoker-bench . scripts/demo/setup.sh
trap 'cleanup; rm -rf "$work"' EXIT
run() { "$install" --root "$host_root" "$@"; }
now_ms() { date +%s%3N; }
wait_healthy() { until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.02; done; }

run apply --environment prod --key "$work/release.pub" --env-file "$work/demo.env" --project "$project" "$b1" >/dev/null 2>&1
t0=$(now_ms); run apply --json --key "$work/release.pub" "$b2" >"$work/apply.json" 2>/dev/null; t1=$(now_ms)
python3 - "$work/apply.json" $((t1 - t0)) <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["data"]["durations_us"]
wall = int(sys.argv[2])
up, health = d.get("up", 0) / 1000, d.get("health", 0) / 1000
print(f"apply v2: wall {wall} ms; compose up {up:.0f} ms; health gate {health:.0f} ms; "
      f"everything else (verify, store, preflight, images, switch, gc, audit) {wall - up - health:.0f} ms")
print("  steps (ms): " + ", ".join(f"{k} {v/1000:.1f}" for k, v in sorted(d.items())))
PY

say "rollback x$rounds (alternating 1 and 2)"
for i in $(seq 1 "$rounds"); do
  for to in 1 2; do
    t0=$(now_ms); run rollback --to "$to" --json >"$work/rb.json" 2>/dev/null; wait_healthy; t1=$(now_ms)
    python3 -c "import json,sys; d=json.load(open(sys.argv[1]))['data']['durations_us']; print('rollback', d['switch'], d['up+health'], sys.argv[2])" "$work/rb.json" $((t1 - t0)) >>"$work/rb.txt"
  done
done

say "plain compose up -d of the same files x$rounds (alternating)"
compose() {
  local dir=$1
  if docker compose version >/dev/null 2>&1; then c=(docker compose); else c=(docker-compose); fi
  ( while IFS='=' read -r k v; do [ -n "$k" ] && export "$k=$v"; done <"$dir/config/prod.env"
    while IFS='=' read -r k v; do [ -n "$k" ] && export "$k=$v"; done <"$work/demo.env"
    "${c[@]}" -p "$project" --project-directory "$dir/stack" -f "$dir/stack/compose.yaml" \
      -f "$dir/generated/pin.compose.yaml" up -d >/dev/null 2>&1 )
}
d1=$(readlink -f "$host_root/profiles/demo/1-link"); d2=$(readlink -f "$host_root/profiles/demo/2-link")
for i in $(seq 1 "$rounds"); do
  for d in "$d1" "$d2"; do
    t0=$(now_ms); compose "$d"; wait_healthy; t1=$(now_ms)
    echo "plain $((t1 - t0))" >>"$work/rb.txt"
  done
done
python3 - "$work/rb.txt" <<'PY'
import statistics, sys
rb, plain = [], []
for line in open(sys.argv[1]):
    p = line.split()
    if p[0] == "rollback":
        rb.append((int(p[1]) / 1000, int(p[2]) / 1000, int(p[3])))
    else:
        plain.append(int(p[1]))
med = statistics.median
print(f"rollback: switch median {med(x[0] for x in rb):.2f} ms (max {max(x[0] for x in rb):.2f}); "
      f"up + health gate median {med(x[1] for x in rb):.0f} ms; "
      f"command start to /health answering median {med(x[2] for x in rb):.0f} ms  (n={len(rb)})")
print(f"plain compose up -d to /health answering: median {med(plain):.0f} ms  (n={len(plain)})")
PY
