#!/bin/sh
# Benchmark: how fast does `smoker-install verify` check a large bundle, and with how much
# memory, compared with the bare cost of decompressing it (`zstd -dc BUNDLE > /dev/null`)?
# And how fast does apply's verify + stage step (`store::stage`, run alone by the example
# `stage_bundle`) unpack it, compared with `zstd -dc BUNDLE | tar -x` into the same disk?
#
# Builds a scratch recipe in a temporary git repository whose compose file bind-mounts a
# directory of about BENCH_MIB MiB (default 1024) of mixed-compressibility data (random bytes,
# base64 text, log-like text), a hand-written lock, and one signed amd64 bundle from it; then
# times each command RUNS times (default 3) on the same file, warm page cache, and prints the
# best wall time of each, peak RSS and the throughput ratios (goal: >= 0.9 for both). The
# staged copy is fsynced file by file (as apply does), `tar -x` is not; `zstd -dc | sha256sum`
# (coreutils' sha256, without SHA extensions) is timed too, for reference.
#
# Usage: scripts/bench-verify.sh            (from anywhere inside the repository)
#        BENCH_MIB=256 RUNS=5 scripts/bench-verify.sh
#        BENCH_OLD_INSTALL=path/to/older/smoker-install scripts/bench-verify.sh   (also times
#        that binary's verify on the same file, for a before/after figure)
# Needs: cargo, git, zstd, sha256sum, GNU time at /usr/bin/time (Debian packages `zstd`,
# `coreutils`, `time`). Temporary data goes to $TMPDIR (default /tmp) and is deleted on exit.
set -eu

BENCH_MIB=${BENCH_MIB:-1024}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "bench-verify: \`$1\` is missing; install the Debian package \`$2\`" >&2
        exit 2
    }
}
need cargo cargo
need git git
need zstd zstd
need sha256sum coreutils
[ -x /usr/bin/time ] || {
    echo "bench-verify: /usr/bin/time is missing; install the Debian package \`time\`" >&2
    exit 2
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-verify.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building release binaries"
(cd "$ROOT" && cargo build --release --quiet && cargo build --release --quiet --example stage_bundle)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
XTASK=$TARGET/release/xtask
INSTALL=$TARGET/release/smoker-install
STAGE=$TARGET/release/examples/stage_bundle

echo "== generating about $BENCH_MIB MiB of payload in $WORK"
REPO=$WORK/repo
RECIPE=$REPO/recipes/bench
mkdir -p "$RECIPE/data"
# Sixteen files: 6/16 random bytes (incompressible), 5/16 base64 text (compresses ~25%),
# 5/16 log-like lines (compresses well).
PART=$((BENCH_MIB / 16))
[ "$PART" -ge 1 ] || PART=1
i=0
while [ $i -lt 16 ]; do
    f=$(printf '%s/data/part-%02d' "$RECIPE" $i)
    if [ $i -lt 6 ]; then
        head -c "$((PART * 1048576))" /dev/urandom >"$f.bin"
    elif [ $i -lt 11 ]; then
        head -c "$((PART * 786432))" /dev/urandom | base64 -w 76 | head -c "$((PART * 1048576))" >"$f.b64"
    else
        awk -v seed=$i -v bytes="$((PART * 1048576))" 'BEGIN {
            srand(seed); n = 0
            while (n < bytes) {
                line = sprintf("2026-03-%02d %02d:%02d:%02d level=%s probe=%d temp_c=%.1f target_c=%d fan=%d%% msg=\"%s\"\n",
                    1 + int(rand() * 28), int(rand() * 24), int(rand() * 60), int(rand() * 60),
                    (rand() < 0.9 ? "info" : "warn"), int(rand() * 4), 90 + rand() * 60,
                    105 + 5 * int(rand() * 6), int(rand() * 100),
                    (rand() < 0.5 ? "probe reading" : "controller step"))
                printf "%s", line; n += length(line)
            }
        }' >"$f.log"
    fi
    i=$((i + 1))
done

cat >"$RECIPE/recipe.toml" <<'EOF'
description = "Benchmark stack: one service with a large bind-mounted data directory"

[health]
window_secs = 30

[[health.http]]
name = "web"
url = "http://127.0.0.1:${PORT}/health"

[env.prod.config]
PORT = "8080"
EOF
cat >"$RECIPE/compose.yaml" <<'EOF'
services:
  web:
    image: registry.example/bench/web:1.0
    ports:
      - "127.0.0.1:${PORT}:8080"
    volumes:
      - ./data:/srv/data:ro
EOF
# A lock written by hand (placeholder digests: valid for building and verifying, not pulling).
cat >"$REPO/recipes/bench.lock" <<EOF
version = 1

[[image]]
reference = "registry.example/bench/web:1.0"

[image.platforms.amd64]
digest = "sha256:$(printf 'bench-web-amd64' | sha256sum | cut -c1-64)"
config_digest = "sha256:$(printf 'bench-web-amd64-config' | sha256sum | cut -c1-64)"
EOF
(
    cd "$REPO"
    git init --quiet
    git add --all
    # Store without compression: the repository is only a source for the release.
    git -c core.compression=0 -c user.name=bench -c user.email=bench@example.invalid \
        commit --quiet -m "benchmark recipe"
)

echo "== building the bundle"
"$XTASK" keygen --no-password --secret-key "$WORK/bench.key" --public-key "$WORK/bench.pub" >/dev/null
/usr/bin/time -f "   release took %e s, peak RSS %M KiB" \
    "$XTASK" release --version 1.0.0 --project-dir "$REPO" --recipe bench --arch amd64 \
    --env prod --secret-key "$WORK/bench.key" --out "$WORK/out" >/dev/null
BUNDLE=$WORK/out/prod/bench-1.0.0-amd64.tar.zst
# The same payload through `tar -c | zstd -T0` at the bundle's level and window, warm cache.
rm -rf "$WORK/out2"
/usr/bin/time -f "%e" -o "$WORK/release.time" \
    "$XTASK" release --version 1.0.0 --project-dir "$REPO" --recipe bench --arch amd64 \
    --env prod --secret-key "$WORK/bench.key" --out "$WORK/out2" >/dev/null
# shellcheck disable=SC2016
/usr/bin/time -f "%e" -o "$WORK/tarzstd.time" \
    sh -c 'tar -cf - -C "$1" data | zstd -q -T0 -9 --zstd=wlog=23 -c >/dev/null' sh "$RECIPE"
rm -rf "$WORK/out2"
RELEASE_SECS=$(cat "$WORK/release.time")
TARZSTD_SECS=$(cat "$WORK/tarzstd.time")
echo "   release (second run, warm cache) ${RELEASE_SECS}s; tar -c | zstd -T0 -9 ${TARZSTD_SECS}s"
rm -rf "$REPO" # the payload is in the bundle now; free the space

COMPRESSED=$(wc -c <"$BUNDLE")
DECOMPRESSED=$(zstd -dc -- "$BUNDLE" | wc -c)
echo "   bundle: $COMPRESSED bytes compressed, $DECOMPRESSED bytes of tar"

# Seconds from GNU time's "Elapsed (wall clock)" field ([h:]mm:ss.ss).
wall_secs() {
    awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0
        for (i = 1; i <= n; i++) s = s * 60 + p[i]
        print s
    }' "$1"
}
rss_kib() {
    awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"
}

cat "$BUNDLE" >/dev/null # warm the page cache for both contenders

best_verify=""
best_base=""
best_dec=""
best_stage=""
best_untar=""
best_untarsync=""
peak_stage=0
peak_verify=0
peak_base=0
run=1
while [ "$run" -le "$RUNS" ]; do
    /usr/bin/time -v -o "$WORK/verify.time" \
        "$INSTALL" verify --key "$WORK/bench.pub" "$BUNDLE" >"$WORK/verify.out"
    # shellcheck disable=SC2016 # "$1" expands in the inner shell
    /usr/bin/time -v -o "$WORK/base.time" \
        sh -c 'zstd -dc -- "$1" | sha256sum' sh "$BUNDLE" >"$WORK/base.out"
    # shellcheck disable=SC2016
    /usr/bin/time -v -o "$WORK/dec.time" sh -c 'zstd -dc -- "$1" >/dev/null' sh "$BUNDLE"
    mkdir -p "$WORK/host" "$WORK/untar"
    /usr/bin/time -v -o "$WORK/stage.time" "$STAGE" "$BUNDLE" "$WORK/bench.pub" "$WORK/host" >/dev/null
    # shellcheck disable=SC2016
    /usr/bin/time -v -o "$WORK/untar.time" sh -c 'zstd -dc -- "$1" | tar -x -C "$2"' sh "$BUNDLE" "$WORK/untar"
    rm -rf "$WORK/untar"
    mkdir -p "$WORK/untar"
    # The same with the files on disk at the end, as apply's fsyncs leave them.
    # shellcheck disable=SC2016
    /usr/bin/time -v -o "$WORK/untarsync.time" sh -c 'zstd -dc -- "$1" | tar -x -C "$2" && sync -f "$2"' sh "$BUNDLE" "$WORK/untar"
    rm -rf "$WORK/untar"
    ty=$(wall_secs "$WORK/untarsync.time")
    best_untarsync=$(awk -v a="$ty" -v b="$best_untarsync" 'BEGIN { print (b == "" || a < b) ? a : b }')
    ts=$(wall_secs "$WORK/stage.time")
    tu=$(wall_secs "$WORK/untar.time")
    rs=$(rss_kib "$WORK/stage.time")
    echo "   run $run: stage ${ts}s (peak RSS ${rs} KiB); zstd -dc | tar -x ${tu}s; and sync ${ty}s"
    best_stage=$(awk -v a="$ts" -v b="$best_stage" 'BEGIN { print (b == "" || a < b) ? a : b }')
    best_untar=$(awk -v a="$tu" -v b="$best_untar" 'BEGIN { print (b == "" || a < b) ? a : b }')
    [ "$rs" -gt "$peak_stage" ] && peak_stage=$rs
    if [ -n "${BENCH_OLD_INSTALL:-}" ]; then
        /usr/bin/time -v -o "$WORK/old.time" \
            "$BENCH_OLD_INSTALL" verify --key "$WORK/bench.pub" "$BUNDLE" >/dev/null
        echo "   run $run: older verify $(wall_secs "$WORK/old.time")s (peak RSS $(rss_kib "$WORK/old.time") KiB)"
    fi
    td=$(wall_secs "$WORK/dec.time")
    tv=$(wall_secs "$WORK/verify.time")
    tb=$(wall_secs "$WORK/base.time")
    rv=$(rss_kib "$WORK/verify.time")
    rb=$(rss_kib "$WORK/base.time")
    echo "   run $run: verify ${tv}s (peak RSS ${rv} KiB); zstd -dc | sha256sum ${tb}s (peak RSS ${rb} KiB); zstd -dc >/dev/null ${td}s"
    best_dec=$(awk -v a="$td" -v b="$best_dec" 'BEGIN { print (b == "" || a < b) ? a : b }')
    best_verify=$(awk -v a="$tv" -v b="$best_verify" 'BEGIN { print (b == "" || a < b) ? a : b }')
    best_base=$(awk -v a="$tb" -v b="$best_base" 'BEGIN { print (b == "" || a < b) ? a : b }')
    [ "$rv" -gt "$peak_verify" ] && peak_verify=$rv
    [ "$rb" -gt "$peak_base" ] && peak_base=$rb
    run=$((run + 1))
done
grep -q '^OK ' "$WORK/verify.out" || {
    echo "bench-verify: verify did not accept the bundle:" >&2
    cat "$WORK/verify.out" >&2
    exit 1
}

echo "== result (best of $RUNS, same file, warm cache)"
awk -v tv="$best_verify" -v tb="$best_base" -v td="$best_dec" -v bytes="$DECOMPRESSED" -v comp="$COMPRESSED" \
    -v rv="$peak_verify" -v rb="$peak_base" -v ts="$best_stage" -v tu="$best_untar" -v rs="$peak_stage" \
    -v tr="$RELEASE_SECS" -v tz="$TARZSTD_SECS" -v ty="$best_untarsync" 'BEGIN {
    mib = bytes / 1048576
    printf "   bundle                       %.0f MiB compressed, %.0f MiB decompressed\n", comp / 1048576, mib
    printf "   smoker-install verify        %6.2f s  %7.1f MiB/s  peak RSS %.1f MiB\n", tv, mib / tv, rv / 1024
    printf "   zstd -dc | sha256sum         %6.2f s  %7.1f MiB/s  peak RSS %.1f MiB\n", tb, mib / tb, rb / 1024
    printf "   zstd -dc >/dev/null          %6.2f s  %7.1f MiB/s\n", td, mib / td
    printf "   apply verify+stage           %6.2f s  %7.1f MiB/s  peak RSS %.1f MiB\n", ts, mib / ts, rs / 1024
    printf "   zstd -dc | tar -x            %6.2f s  %7.1f MiB/s\n", tu, mib / tu
    printf "   zstd -dc | tar -x && sync    %6.2f s  %7.1f MiB/s\n", ty, mib / ty
    printf "   ratio verify / (zstd -dc >/dev/null)       = %.2f  (goal >= 0.9)\n", td / tv
    printf "   ratio verify+stage / (zstd -dc | tar -x)   = %.2f  (goal >= 0.9)\n", tu / ts
    printf "   (ratio verify+stage / (... && sync)        = %.2f: apply fsyncs what it stages)\n", ty / ts
    printf "   (ratio verify / (zstd -dc | sha256sum)     = %.2f)\n", tb / tv
    printf "   ratio release / (tar -c | zstd -T0 -9)     = %.2f  (goal >= 0.8)\n", tz / tr
}'
