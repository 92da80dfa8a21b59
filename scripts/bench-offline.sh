#!/usr/bin/env bash
# Benchmark of offline bundles (not a test): how big is an offline bundle compared with
# `docker save | gzip` of the same images, how long does the installer take to load its
# images, and how much memory does `smoker-install apply` need?
#
# Builds two FROM scratch images that share their base layers: image A = the static test
# service + BENCH_RANDOM_MIB MiB of random bytes + BENCH_TEXT_MIB MiB of compressible text
# (three layers), image B = A + BENCH_EXTRA_MIB MiB more random bytes (one more layer). Pushes
# them to a registry on loopback, locks them, releases one offline amd64 bundle, stops the
# registry, removes both images from the host, and applies the bundle with
# `smoker-install apply` in a network namespace whose only interface is loopback, under
# `/usr/bin/time -v`. Prints:
#   - offline bundle size vs `docker save A B | gzip` (gzip -6) size and time;
#   - the installer's images step (streaming the archive into `docker load`), and apply total;
#   - peak RSS of the whole apply process tree (GNU time: the largest single process) and of
#     the smoker-install process itself (VmHWM, sampled from /proc every 50 ms).
#
# Usage: scripts/bench-offline.sh
#        BENCH_RANDOM_MIB=512 BENCH_TEXT_MIB=256 BENCH_EXTRA_MIB=16 scripts/bench-offline.sh
# Needs: root (network namespace), Docker, docker-registry, GNU time, util-linux `unshare`,
# iproute2, cargo. Temporary data (about 6x the image size) goes to $TMPDIR and is removed on
# exit, together with the images, containers and registry this script made.
set -euo pipefail

BENCH_RANDOM_MIB=${BENCH_RANDOM_MIB:-512}
BENCH_TEXT_MIB=${BENCH_TEXT_MIB:-256}
BENCH_EXTRA_MIB=${BENCH_EXTRA_MIB:-16}
top=$(cd "$(dirname "$0")/.." && pwd)

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "bench-offline: \`$1\` is missing (Debian package \`$2\`)" >&2; exit 2; }
}
need cargo cargo
need docker docker.io
need docker-registry docker-registry
need unshare util-linux
need ip iproute2
need python3 python3
[ -x /usr/bin/time ] || { echo "bench-offline: GNU time is missing (Debian package \`time\`)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "bench-offline: run as root (it makes a network namespace)" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "bench-offline: the Docker daemon does not answer" >&2; exit 2; }

say() { printf '==> %s\n' "$*" >&2; }
mib() { python3 -c "import sys; print(f'{int(sys.argv[1])/1048576:.1f} MiB')" "$1"; }
secs() { python3 -c "import sys; print(f'{int(sys.argv[1])/1e6:.2f} s')" "$1"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/smoker-bench-offline.XXXXXX")
tag=smoker-bench-$$
project=smoker-bench-$$
regpid=""
cleanup() {
  set +e
  docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null 2>&1
  docker network rm "${project}_default" >/dev/null 2>&1
  [ -n "$regpid" ] && kill "$regpid" 2>/dev/null && wait "$regpid" 2>/dev/null
  for r in $(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E "(^|/)($tag|bench-[ab])(:|$)|smoker.invalid/bench-" ); do
    docker image rm -f "$r" >/dev/null 2>&1
  done
  for id in "${ID_B:-}" "${ID_A:-}"; do [ -n "$id" ] && docker image rm -f "$id" >/dev/null 2>&1; done
  rm -rf "$work"
}
trap cleanup EXIT

say "building smoker-install and xtask (release profile) and the static test service"
(cd "$top" && cargo build -q --release --locked -p smoker-release --bin smoker-install)
(cd "$top" && cargo build -q --release --locked -p xtask --bin xtask)
(cd "$top" && RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$top/target/testsvc-static" \
  cargo build -q --release --locked -p testsvc --target x86_64-unknown-linux-gnu)
install=$top/target/release/smoker-install
xtask=$top/target/release/xtask

say "building image A ($BENCH_RANDOM_MIB MiB random + $BENCH_TEXT_MIB MiB text) and image B (A + $BENCH_EXTRA_MIB MiB)"
mkdir -p "$work/a" "$work/b"
cp "$top/target/testsvc-static/x86_64-unknown-linux-gnu/release/testsvc" "$work/a/"
head -c $((BENCH_RANDOM_MIB << 20)) /dev/urandom >"$work/a/random.bin"
(seq 1 200000000 || true) | head -c $((BENCH_TEXT_MIB << 20)) >"$work/a/text.txt"
printf 'FROM scratch\nCOPY testsvc /testsvc\nCOPY random.bin /data/random.bin\nCOPY text.txt /data/text.txt\nENTRYPOINT ["/testsvc"]\nCMD ["serve"]\n' >"$work/a/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag-a:local" "$work/a" >/dev/null
head -c $((BENCH_EXTRA_MIB << 20)) /dev/urandom >"$work/b/extra.bin"
printf 'FROM %s\nCOPY extra.bin /data/extra.bin\nLABEL bench=b\n' "$tag-a:local" >"$work/b/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag-b:local" "$work/b" >/dev/null
rm -rf "$work/a" "$work/b"
ID_A=$(docker image inspect --format '{{.Id}}' "$tag-a:local")
ID_B=$(docker image inspect --format '{{.Id}}' "$tag-b:local")
size_a=$(docker image inspect --format '{{.Size}}' "$tag-a:local")
size_b=$(docker image inspect --format '{{.Size}}' "$tag-b:local")

say "docker save A B | gzip"
t0=$(date +%s%N)
save_bytes=$(docker save "$tag-a:local" "$tag-b:local" | gzip -6 | wc -c)
save_us=$(( ($(date +%s%N) - t0) / 1000 ))

say "pushing both to a registry on loopback"
regport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/registry"
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
  "$work/registry" "$regport" >"$work/registry.yml"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
regpid=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$regport/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
reg=127.0.0.1:$regport
for x in a b; do
  docker tag "$tag-$x:local" "$reg/bench-$x:1"
  docker push -q "$reg/bench-$x:1" >/dev/null
done

say "lock + offline release"
proj=$work/project
mkdir -p "$proj/recipes/bench"
printf 'services:\n  a:\n    image: %s\n  b:\n    image: %s\n' "$reg/bench-a:1" "$reg/bench-b:1" >"$proj/recipes/bench/compose.yaml"
printf '[health]\nwindow_secs = 60\ninterval_ms = 500\n\n[env.prod.config]\nX = "1"\n' >"$proj/recipes/bench/recipe.toml"
"$xtask" lock --project-dir "$proj" --arch amd64 >/dev/null
"$xtask" keygen --no-password --secret-key "$work/release.key" --public-key "$work/release.pub" >/dev/null
t0=$(date +%s%N)
SOURCE_DATE_EPOCH=1700000000 "$xtask" release --project-dir "$proj" --version 1.0.0 --arch amd64 \
  --offline --blob-cache "$work/cache" --secret-key "$work/release.key" --out "$work/out" >/dev/null 2>"$work/release.log"
release_us=$(( ($(date +%s%N) - t0) / 1000 ))
bundle=$work/out/prod/bench-1.0.0-amd64.tar.zst
bundle_bytes=$(stat -c %s "$bundle")
rm -rf "$work/cache"

say "stopping the registry and removing both images from the host"
kill "$regpid"; wait "$regpid" 2>/dev/null || true; regpid=""
docker image rm -f "$reg/bench-b:1" "$tag-b:local" "$reg/bench-a:1" "$tag-a:local" >/dev/null
docker image inspect "$ID_A" >/dev/null 2>&1 && { echo "bench-offline: image A is still present" >&2; exit 1; }

say "smoker-install apply, no route out, under /usr/bin/time -v"
: >"$work/host.env"
chmod 600 "$work/host.env"
/usr/bin/time -v -o "$work/time.txt" \
  unshare --net -- sh -c 'ip link set lo up && exec "$0" "$@"' "$install" \
  --root "$work/root" --host-config "$work/host.toml" apply --json --environment prod \
  --key "$work/release.pub" --env-file "$work/host.env" --project "$project" "$bundle" \
  >"$work/apply.json" 2>"$work/apply.log" &
tpid=$!
hwm=0
while kill -0 "$tpid" 2>/dev/null; do
  for p in $(pgrep -x smoker-install 2>/dev/null); do
    if grep -q -- "$work/root" "/proc/$p/cmdline" 2>/dev/null; then
      v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
      [ -n "$v" ] && [ "$v" -gt "$hwm" ] && hwm=$v
    fi
  done
  sleep 0.05
done
if ! wait "$tpid"; then
  echo "bench-offline: apply failed:" >&2; cat "$work/apply.log" >&2; exit 1
fi
images_us=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"]["durations_us"]["images"])' "$work/apply.json")
maxrss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt")
loaded=$(grep -c 'loading' "$work/apply.log" || true)

cat <<EOF

offline bundle benchmark (images: A $(mib "$size_a"), B $(mib "$size_b"), sharing A's layers)
  offline bundle (zstd, 1 archive)     $(mib "$bundle_bytes")   release --offline took $(secs "$release_us") (cold blob cache)
  docker save A B | gzip -6            $(mib "$save_bytes")   took $(secs "$save_us")
  ratio bundle / save|gzip             $(python3 -c "print(f'{$bundle_bytes/$save_bytes:.3f}')")
  apply (offline, images removed)      wall $wall; loading step (archive → docker load) $(secs "$images_us")
  peak RSS, whole apply process tree   $(mib $((maxrss_kb * 1024)))   (GNU time: largest single process)
  peak RSS, smoker-install itself      $(mib $((hwm * 1024)))   (VmHWM)
  (Raspberry Pi 3: 921 MiB of RAM)
EOF
[ "$loaded" -ge 1 ] || echo "warning: the apply log does not mention loading images" >&2
