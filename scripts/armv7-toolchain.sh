#!/usr/bin/env bash
# armv7-toolchain.sh — install what is needed to cross-build (and test under
# emulation) for armv7-unknown-linux-gnueabihf, using Debian's own toolchain.
#
# The rustup toolchain on the build machines has only the x86_64 target. Debian
# bookworm carries a newer rustc/cargo ("rustc-web"/"cargo-web", from
# bookworm-security) and, for armhf, the matching standard library. This script:
#
#   1. apt-installs rustc-web + cargo-web (one exact version), the armhf cross
#      gcc and libc, and qemu-user-static;
#   2. fetches the armhf standard library of the SAME version as the installed
#      rustc-web (libstd-rust-web-dev, libstd-rust-web-<major.minor>) as .deb
#      files straight from the security archive's pool — the archive's address is
#      read from this machine's apt sources — checks their hashes, unpacks them
#      with `dpkg -x` and copies usr/lib/rustlib/<target> into /usr/lib/rustlib/;
#   3. checks the result and prints the environment for the build.
#
# It never adds armhf to dpkg: with armhf enabled, bookworm-security's armhf
# index fails to load on some mirrors and every `apt-get update` exits 100.
#
# Usage:
#   scripts/armv7-toolchain.sh              install (idempotent), check, print env
#   scripts/armv7-toolchain.sh --check      only check; exit 1 if something is missing
#   scripts/armv7-toolchain.sh --print-env  only print the `export` lines, e.g.
#                                           eval "$(scripts/armv7-toolchain.sh --print-env)"
#   scripts/armv7-toolchain.sh --help
#
# Environment:
#   RUSTC_WEB_VERSION   exact Debian version of rustc-web to use (default: apt's
#                       candidate, i.e. the newest one the apt sources serve).
#   ARMV7_SKIP_APT_UPDATE=1   do not run `apt-get update` before installing.
#   ARMV7_REQUIRE_SIGNED=1    fail unless the armhf .deb files can be checked
#                       against the archive's signed InRelease (by default an
#                       index that does not match it only warns: some mirrors
#                       serve such an armhf index for bookworm-security).
#
# Build with (see --print-env):
#   eval "$(scripts/armv7-toolchain.sh --print-env)"
#   cargo build --release --target armv7-unknown-linux-gnueabihf
#   cargo test --target armv7-unknown-linux-gnueabihf     # runs under qemu
set -Eeuo pipefail

TARGET=armv7-unknown-linux-gnueabihf
GNU_TRIPLE=arm-linux-gnueabihf
RUSTLIB=/usr/lib/rustlib
MARKER="$RUSTLIB/$TARGET/.installed-by-armv7-toolchain"
APT_PACKAGES_CROSS=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static)

log()  { printf '==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
on_err() { printf 'ERROR: %s: command failed (exit %s) at line %s: %s\n' "${0##*/}" "$1" "$2" "$3" >&2; }
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

print_env() {
    cat <<EOF
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=$GNU_TRIPLE-gcc
export CC_armv7_unknown_linux_gnueabihf=$GNU_TRIPLE-gcc
export AR_armv7_unknown_linux_gnueabihf=$GNU_TRIPLE-ar
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm-static -L /usr/$GNU_TRIPLE"
EOF
}

usage() { sed -n '2,/^set -E/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------
# checks

installed_version() { { dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$1" 2>/dev/null || true; } | sed -n 's/^ii *//p'; }

check_all() {
    local ok=0 v
    log "Checking the armv7 toolchain"
    if [ -x /usr/bin/rustc ]; then info "$(/usr/bin/rustc --version)"; else warn "/usr/bin/rustc is missing"; ok=1; fi
    if [ -x /usr/bin/cargo ]; then info "$(/usr/bin/cargo --version)"; else warn "/usr/bin/cargo is missing"; ok=1; fi
    if ls "$RUSTLIB/$TARGET/lib"/libstd-*.rlib >/dev/null 2>&1; then
        info "std for $TARGET: $(ls "$RUSTLIB/$TARGET/lib"/libstd-*.rlib)"
    else
        warn "no libstd-*.rlib in $RUSTLIB/$TARGET/lib"; ok=1
    fi
    v=$(installed_version rustc-web)
    if [ -f "$MARKER" ] && [ -n "$v" ]; then
        if grep -qx "version=$v" "$MARKER"; then
            info "armv7 std matches rustc-web $v"
        else
            warn "armv7 std in $RUSTLIB/$TARGET is from $(sed -n 's/^version=//p' "$MARKER"), rustc-web is $v: rerun this script"; ok=1
        fi
    elif [ -n "$v" ]; then
        warn "armv7 std was not installed by this script (no $MARKER)"; ok=1
    fi
    if command -v $GNU_TRIPLE-gcc >/dev/null; then info "$($GNU_TRIPLE-gcc --version | head -n1)"; else warn "$GNU_TRIPLE-gcc is missing"; ok=1; fi
    if [ -e /usr/$GNU_TRIPLE/lib/libc.so.6 ]; then info "armhf libc: /usr/$GNU_TRIPLE/lib/libc.so.6"; else warn "armhf libc (libc6-armhf-cross) is missing"; ok=1; fi
    if command -v qemu-arm-static >/dev/null; then info "$(qemu-arm-static --version | head -n1)"; else warn "qemu-arm-static is missing"; ok=1; fi
    if [ -x /usr/bin/rustc ] && [ $ok -eq 0 ]; then
        # the real proof: compile and link a tiny program for the target
        local t; t=$(mktemp -d)
        printf 'fn main() { println!("hello from armv7"); }\n' >"$t/m.rs"
        if /usr/bin/rustc --edition 2021 --target $TARGET -C linker=$GNU_TRIPLE-gcc -o "$t/m" "$t/m.rs" 2>"$t/err"; then
            info "test program: $(qemu-arm-static -L /usr/$GNU_TRIPLE "$t/m" 2>&1 || true)"
        else
            warn "rustc cannot build for $TARGET:"; cat "$t/err" >&2; ok=1
        fi
        rm -rf "$t"
    fi
    return $ok
}

# ---------------------------------------------------------------------------
# apt sources: base URIs of the archive that serves SUITE (one-line and deb822)

sources_uris_for_suite() {
    local suite=$1 f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            { sub(/#.*/, "") }
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) print $i
            }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no" \
                    && (" " suites " ") ~ (" " suite " "))
                    print uris
                types = ""; uris = ""; suites = ""; enabled = ""; field = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/   { if (field == "uris") uris = uris " " $0; else if (field == "suites") suites = suites " " $0; next }
            {
                field = tolower($0); sub(/:.*/, "", field)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                if (field == "types") types = val
                else if (field == "uris") uris = val
                else if (field == "suites") suites = val
                else if (field == "enabled") enabled = val
            }
            END { flush() }' "$f" | tr -s '[:blank:]' '\n'
    done
}

# apt's own view of the same sources, as a fallback for formats the parser above misses
apt_uris_for_suite() {
    # shellcheck disable=SC2016  # $(REPO_URI) is apt's template, not a shell expansion
    apt-get indextargets --format '$(REPO_URI)' "Codename: $1" "Created-By: Packages" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# install

as_root() {
    [ "$(id -u)" -eq 0 ] || die "this step needs root (run the script as root)"
}

apt_install() {
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        || die "apt-get install $* failed"
}

drop_armhf_arch() {
    if dpkg --print-foreign-architectures | grep -qx armhf; then
        if [ -z "$(dpkg-query -W -f='${Package}:${Architecture}\n' 2>/dev/null | grep ':armhf$' || true)" ]; then
            log "armhf is enabled in dpkg but no armhf package is installed: removing it (it breaks apt-get update)"
            dpkg --remove-architecture armhf
        else
            warn "armhf is a dpkg architecture with armhf packages installed; 'apt-get update' may fail on bookworm-security's armhf index"
        fi
    fi
}

# fetch URL to FILE through apt's downloader (honours apt's proxy settings)
fetch() {
    local url=$1 out=$2
    info "fetching $url"
    /usr/lib/apt/apt-helper -o APT::Sandbox::User=root -o Debug::NoLocking=1 \
        download-file "$url" "$out" >/dev/null 2>"$out.err" && [ -s "$out" ] && return 0
    sed 's/^/      /' "$out.err" >&2
    return 1
}

# field F of the stanza for package P in a Packages file
pkg_field() {
    awk -v p="$1" -v v="$2" -v f="$3" '
        /^$/ { if (pp == p && vv == v && out != "") { print out; found = 1; exit } pp = vv = out = "" }
        /^Package: / { pp = $2 } /^Version: / { vv = $2 }
        index($0, f ": ") == 1 { out = substr($0, length(f) + 3) }
        END { if (!found && pp == p && vv == v && out != "") print out }' "$4"
}

install_armv7_std() {
    local version=$1 codename suite pool_dir base uris tmp
    local mm=${version%%+*}; mm=${mm%.*}     # 1.96.0+dfsg1-1~deb12u2 -> 1.96
    local packages=(libstd-rust-web-dev "libstd-rust-web-$mm")

    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || die "cannot read VERSION_CODENAME from /etc/os-release"
    suite="$codename-security"

    # pool directory of rustc-web, from the amd64 package record (pool/updates/main/r/rustc-web)
    pool_dir=$({ apt-cache show "rustc-web=$version" 2>/dev/null || true; } | sed -n 's/^Filename: //p' | head -n1)
    pool_dir=${pool_dir%/*}
    [ -n "$pool_dir" ] || pool_dir=pool/updates/main/r/rustc-web

    uris=$(sources_uris_for_suite "$suite" | sed -n 's#^\(https\{0,1\}://.*[^/]\)/*$#\1#p' | awk '!seen[$0]++')
    if [ -z "$uris" ]; then
        uris=$(apt_uris_for_suite "$suite" | sed -n 's#^\(https\{0,1\}://.*[^/]\)/*$#\1#p' | awk '!seen[$0]++')
    fi
    [ -n "$uris" ] || die "no http(s) apt source serves '$suite' (looked in /etc/apt/sources.list and /etc/apt/sources.list.d/*.list, *.sources); add the Debian security archive for $suite to the apt sources"
    log "Archive(s) serving $suite, from the apt sources: ${uris//$'\n'/ }"

    tmp=$(mktemp -d /tmp/armv7-std.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT

    local got=""
    for base in $uris; do
        local ok=1 p
        rm -f "$tmp"/*.deb
        for p in "${packages[@]}"; do
            fetch "$base/$pool_dir/${p}_${version}_armhf.deb" "$tmp/${p}.deb" || { ok=0; break; }
        done
        if [ $ok -eq 1 ]; then got=$base; break; fi
        warn "could not fetch the armhf packages from $base"
    done
    [ -n "$got" ] || die "could not download ${packages[*]} $version (armhf) from $pool_dir of any of: ${uris//$'\n'/ }. Is rustc-web $version still in the archive? (Set RUSTC_WEB_VERSION or update apt.)"

    verify_debs "$got" "$suite" "$version" "$tmp" "${packages[@]}"

    log "Unpacking with dpkg -x"
    mkdir -p "$tmp/root"
    for p in "${packages[@]}"; do dpkg -x "$tmp/$p.deb" "$tmp/root"; done
    [ -d "$tmp/root/usr/lib/rustlib/$TARGET/lib" ] || die "the packages contain no usr/lib/rustlib/$TARGET/lib"
    ls "$tmp/root/usr/lib/rustlib/$TARGET/lib"/libstd-*.rlib >/dev/null 2>&1 || die "the packages contain no libstd rlib for $TARGET"

    log "Installing $RUSTLIB/$TARGET (replacing any older copy)"
    rm -rf "$RUSTLIB/$TARGET.new"
    mkdir -p "$RUSTLIB"
    cp -a "$tmp/root/usr/lib/rustlib/$TARGET" "$RUSTLIB/$TARGET.new"
    printf 'version=%s\nfrom=%s\npackages=%s\n' "$version" "$got/$pool_dir" "${packages[*]}" >"$RUSTLIB/$TARGET.new/${MARKER##*/}"
    rm -rf "${RUSTLIB:?}/$TARGET"
    mv "$RUSTLIB/$TARGET.new" "$RUSTLIB/$TARGET"
    info "$(find "$RUSTLIB/$TARGET" -name '*.rlib' | wc -l) rlibs installed"
    rm -rf "$tmp"
    trap - EXIT
}

# Check the .deb files against the archive's armhf Packages index. The index is
# trusted when its hash matches the InRelease that apt already verified during
# `apt-get update`; some mirrors serve an index that does not match (the very
# reason the armhf index does not load in apt), and then it is only used to
# catch corrupted or truncated downloads.
verify_debs() {
    local base=$1 suite=$2 version=$3 tmp=$4; shift 4
    local inrelease want="" have="" trusted=0 p sha size
    log "Verifying the downloaded packages"
    for p in "$@"; do
        if [ "$(dpkg-deb -f "$tmp/$p.deb" Package Version Architecture 2>/dev/null | tr '\n' ' ')" \
            != "Package: $p Version: $version Architecture: armhf " ]; then
            die "$p.deb is not a valid .deb of $p $version armhf"
        fi
    done
    inrelease="/var/lib/apt/lists/$(printf '%s/dists/%s/InRelease' "${base#*://}" "$suite" | tr / _)"
    if fetch "$base/dists/$suite/main/binary-armhf/Packages.xz" "$tmp/Packages.xz" \
        && xz -dc "$tmp/Packages.xz" >"$tmp/Packages" 2>/dev/null; then
        have=$(sha256sum "$tmp/Packages.xz" | cut -d' ' -f1)
        [ -f "$inrelease" ] && want=$(awk '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 }
            s && $3 == "main/binary-armhf/Packages.xz" { print $1 }' "$inrelease")
        if [ -n "$want" ] && [ "$want" = "$have" ]; then
            trusted=1
            info "the armhf Packages index matches the InRelease apt verified: its hashes authenticate the packages"
        else
            warn "the armhf Packages index served (sha256 $have) does not match the InRelease apt verified (${want:-none found in $inrelease}); its hashes only catch corrupted downloads, not tampering"
        fi
    else
        warn "could not get $suite's armhf Packages index"
        : >"$tmp/Packages"
    fi
    for p in "$@"; do
        sha=$(pkg_field "$p" "$version" SHA256 "$tmp/Packages")
        size=$(pkg_field "$p" "$version" Size "$tmp/Packages")
        if [ -z "$sha" ]; then
            [ $trusted -eq 0 ] || die "$p $version is not in $suite's (verified) armhf index"
            warn "$p $version is not in the armhf index served: $p.deb is NOT verified"
            continue
        fi
        [ "$(stat -c %s "$tmp/$p.deb")" = "$size" ] || die "$p.deb: size $(stat -c %s "$tmp/$p.deb") != $size from the index"
        [ "$(sha256sum "$tmp/$p.deb" | cut -d' ' -f1)" = "$sha" ] || die "$p.deb: sha256 does not match the index"
        info "$p.deb: size and sha256 match the index ($sha)"
    done
    if [ $trusted -eq 0 ] && [ "${ARMV7_REQUIRE_SIGNED:-0}" = 1 ]; then
        die "ARMV7_REQUIRE_SIGNED=1 and the armhf packages could not be authenticated against the signed InRelease"
    fi
}

install_all() {
    local start version cur need_apt=0 p
    start=$(date +%s)
    as_root
    command -v apt-get >/dev/null || die "this script needs a Debian system with apt"
    drop_armhf_arch

    # decide the rustc-web version
    cur=$(installed_version rustc-web)
    version=${RUSTC_WEB_VERSION:-}
    for p in cargo-web "${APT_PACKAGES_CROSS[@]}"; do [ -n "$(installed_version "$p")" ] || need_apt=1; done
    [ -n "$version" ] && [ "$version" != "$cur" ] && need_apt=1
    [ -z "$cur" ] && need_apt=1
    [ -n "$(installed_version cargo-web)" ] && [ -n "$cur" ] && [ "$(installed_version cargo-web)" != "$cur" ] && need_apt=1

    if [ $need_apt -eq 1 ]; then
        if [ "${ARMV7_SKIP_APT_UPDATE:-0}" != 1 ]; then
            log "apt-get update"
            apt-get update -q >/dev/null || die "apt-get update failed (if armhf was added to dpkg, remove it: dpkg --remove-architecture armhf)"
        fi
        if [ -z "$version" ]; then
            version=$(apt-cache policy rustc-web | sed -n 's/^ *Candidate: //p')
            { [ -n "$version" ] && [ "$version" != "(none)" ]; } || die "apt has no candidate for rustc-web; is the Debian security archive (<codename>-security) in the apt sources?"
        fi
        log "rustc-web/cargo-web version: $version"
        apt_install "rustc-web=$version" "cargo-web=$version" "${APT_PACKAGES_CROSS[@]}"
    else
        log "apt packages already installed (rustc-web $cur); skipping apt"
    fi

    version=$(installed_version rustc-web)
    [ -n "$version" ] || die "rustc-web is not installed after apt-get install"
    [ "$(installed_version cargo-web)" = "$version" ] || die "cargo-web $(installed_version cargo-web) does not match rustc-web $version"

    if [ -f "$MARKER" ] && grep -qx "version=$version" "$MARKER" \
        && ls "$RUSTLIB/$TARGET/lib"/libstd-*.rlib >/dev/null 2>&1; then
        log "armv7 std $version already in $RUSTLIB/$TARGET; skipping download"
    else
        log "Installing the armhf standard library $version for $TARGET"
        install_armv7_std "$version"
    fi
    drop_armhf_arch

    check_all || die "the armv7 toolchain check failed (see above)"
    log "Done in $(( $(date +%s) - start ))s. Environment for an armv7 build:"
    print_env
    cat >&2 <<EOF
    # then, for example:
    #   cargo build --release --target $TARGET
    #   cargo test --target $TARGET          (runs the tests under qemu)
EOF
}

case "${1:-}" in
    "")          install_all ;;
    --check)     check_all && print_env ;;
    --print-env) print_env ;;
    -h|--help)   usage ;;
    *)           usage >&2; die "unknown argument: $1" ;;
esac
