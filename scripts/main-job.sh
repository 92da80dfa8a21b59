#!/usr/bin/env bash
# The main job, end to end on this machine:
#   1. install what is needed; build the workspace;
#   2. generate a release key if there is none (kept outside the repository's keys/);
#   3. release the example recipes (every environment, amd64 + armv7) and verify every bundle
#      with smoker-install and with the reference minisign CLI;
#   4. on the local Docker engine: build a tiny image, push it to a registry on loopback, release
#      a demo stack three times (v1, v2, and an unhealthy v3), apply them to a scratch host
#      root, watch the automatic rollback, roll back by hand, and show status and history.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

./scripts/install-deps.sh
say "building"
cargo build --workspace --locked --bins
xtask=$top/target/debug/xtask
install=$top/target/debug/smoker-install

work=${SMOKER_WORK:-$top/.smoker-dev}
mkdir -p "$work"
key=$work/release.key
pub=$work/release.pub
if [ ! -f "$key" ]; then
  say "generating a release key pair in $work (no password; for this demo only)"
  "$xtask" keygen --no-password --secret-key "$key" --public-key "$pub"
fi

say "releasing the example recipes"
rm -rf "$work/bundles"
"$xtask" release --version 1.4.0 --out "$work/bundles" --secret-key "$key"
for b in "$work"/bundles/*/*.tar.zst; do
  "$install" verify --key "$pub" "$b"
  minisign -Vqm "$b" -p "$pub"
done
(cd "$work/bundles/prod" && sha256sum -c --quiet SHA256SUMS && echo "SHA256SUMS of prod: OK")

. scripts/demo/setup.sh
run() { "$install" --root "$host_root" "$@"; }
ask() { printf '    GET /version -> %s\n' "$(curl -s "http://127.0.0.1:$port/version")"; }

say "apply v1"; run apply --environment prod --key "$pub" --env-file "$work/demo.env" --project "$project" "$b1"; ask
say "apply v2"; run apply --key "$pub" "$b2"; ask
say "apply v3 (unhealthy: the installer rolls back by itself)"
if run apply --key "$pub" "$b3"; then echo "v3 should have failed" >&2; exit 1; fi
ask
say "rollback --to 1 (no bundle, no registry needed)"
kill "$regpid"; regpid=
run rollback --to 1; ask
say "status and history"
run status; run history
run audit verify
say "done: the demo stack is removed on exit; bundles of the example recipes are in $work/bundles"
