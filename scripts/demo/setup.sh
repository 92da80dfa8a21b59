# Shared by main-job.sh and the benchmarks: builds the demo image, pushes it to a registry on
# loopback, and releases the demo stack. Expects: top, xtask, key, work, say(). Defines:
# regpid, host_root, project, port, b1 b2 b3 (bundles), cleanup (trap it).
say "building the demo image and pushing it to a registry on loopback"
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$top/target/testsvc-static \
  cargo build -q --release --locked -p testsvc --target x86_64-unknown-linux-gnu
ctx=$(mktemp -d)
regdir=$(mktemp -d)
host_root=$(mktemp -d)
project=${DEMO_PROJECT:-smoker-demo}
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
