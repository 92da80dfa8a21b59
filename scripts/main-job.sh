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

say "building the demo image and pushing it to a registry on loopback"
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$top/target/testsvc-static \
  cargo build -q --release --locked -p testsvc --target x86_64-unknown-linux-gnu
ctx=$(mktemp -d)
regdir=$(mktemp -d)
host_root=$(mktemp -d)
project=smoker-demo
cleanup() {
  set +e
  docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null
  [ -n "${regpid:-}" ] && kill "$regpid" 2>/dev/null
  rm -rf "$ctx" "$regdir" "$host_root"
}
trap cleanup EXIT
cp "$top/target/testsvc-static/x86_64-unknown-linux-gnu/release/testsvc" "$ctx/"
printf 'FROM scratch\nCOPY testsvc /testsvc\nENTRYPOINT ["/testsvc"]\nCMD ["serve"]\n' >"$ctx/Dockerfile"
docker build -q -t smoker-demo/web:local "$ctx" >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
regport=$(free_port)
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$regdir" "$regport" >"$regdir/config.yml"
docker-registry serve "$regdir/config.yml" >"$regdir/log" 2>&1 &
regpid=$!
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$regport/v2/" >/dev/null && break; sleep 0.2; done
image=127.0.0.1:$regport/smoker-demo/web:1
docker tag smoker-demo/web:local "$image"
docker push -q "$image" >/dev/null
digest=$(curl -sfI -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://127.0.0.1:$regport/v2/smoker-demo/web/manifests/1" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
image_id=$(docker image inspect -f '{{.Id}}' "$image")
echo "pushed $image as $digest (image id $image_id)"

say "releasing the demo stack: v1, v2, and an unhealthy v3"
demo=$work/demo-project
rm -rf "$demo" && mkdir -p "$demo/recipes/demo"
git -C "$demo" init -q
port=$(free_port)
cat >"$demo/recipes/demo.lock" <<LOCK
version = 1

[[image]]
reference = "$image"

[image.platforms.amd64]
digest = "$digest"
config_digest = "$image_id"
LOCK
sed "s|@IMAGE@|$image|" scripts/demo/compose.yaml >"$demo/recipes/demo/compose.yaml"
release() { # version greeting unhealthy
  sed "s|@PORT@|$port|; s|@GREETING@|$2|; s|@UNHEALTHY@|$3|" scripts/demo/recipe.toml >"$demo/recipes/demo/recipe.toml"
  git -C "$demo" add -A && git -C "$demo" -c user.name=demo -c user.email=demo@localhost commit -qm "demo $1"
  "$xtask" release --project-dir "$demo" --recipe demo --arch amd64 --version "$1" --out "$demo/out" --secret-key "$key" >/dev/null
  echo "$demo/out/prod/demo-$1-amd64.tar.zst"
}
b1=$(release 1.0.0 "hello from v1" 0)
b2=$(release 2.0.0 "hello from v2" 0)
b3=$(release 3.0.0 "hello from v3" 1)
"$xtask" verify-rebuild --repo "$demo" "$b3"
printf 'DEMO_TOKEN=demo-token\n' >"$work/demo.env"
chmod 600 "$work/demo.env"
run() { "$install" --root "$host_root" "$@"; }
ask() { printf '    GET /version -> %s\n' "$(curl -s "http://127.0.0.1:$port/version")"; }

say "apply v1"; run apply --key "$pub" --env-file "$work/demo.env" --project "$project" "$b1"; ask
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
